//! The JSON of `reservoir up`'s control API (three-region clusters), which
//! `up` serves and tests and the load tester call. Its address is
//! `cluster.json`'s `control`. Every call is a POST with a JSON body (a GET
//! for [`LINKS`]), and every answer to a link call is the list of links
//! ([`LinkState`]).

use serde::{Deserialize, Serialize};

/// `GET`: every link and whether it is cut.
pub const LINKS: &str = "/links";
/// `POST` a [`PartitionRequest`]: cut a region off, or one link.
pub const PARTITION: &str = "/links/partition";
/// `POST {}`: heal every link.
pub const HEAL: &str = "/links/heal";

/// `POST {}`: SIGKILL node `{id}` (answered once it is reaped); the route
/// as `up` serves it ([`kill_path`] fills in the id).
pub const KILL: &str = "/nodes/{id}/kill";
/// `POST {}`: start node `{id}` again on its data ([`restart_path`]).
pub const RESTART: &str = "/nodes/{id}/restart";

/// [`KILL`] for node `id`.
pub fn kill_path(id: u64) -> String {
    KILL.replace("{id}", &id.to_string())
}

/// [`RESTART`] for node `id`.
pub fn restart_path(id: u64) -> String {
    RESTART.replace("{id}", &id.to_string())
}

/// One WAN link between two regions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// One region (name order).
    pub a: String,
    /// The other region.
    pub b: String,
    /// The round trip the link adds.
    pub rtt_ms: u64,
    /// True while cut.
    pub cut: bool,
}

/// What to cut: a whole region (`{"region": R}`) or one link
/// (`{"a": R1, "b": R2}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRequest {
    /// Cut every link of this region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// One end of the one link to cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    /// The other end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}

impl PartitionRequest {
    /// Cut `region` off from the others.
    pub fn region(region: &str) -> PartitionRequest {
        PartitionRequest {
            region: Some(region.to_string()),
            ..PartitionRequest::default()
        }
    }

    /// Cut the link between `a` and `b`.
    pub fn link(a: &str, b: &str) -> PartitionRequest {
        PartitionRequest {
            a: Some(a.to_string()),
            b: Some(b.to_string()),
            ..PartitionRequest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_requests_read_as_documented() {
        let region = serde_json::to_string(&PartitionRequest::region("eu-west")).unwrap();
        assert_eq!(region, r#"{"region":"eu-west"}"#);
        let link: PartitionRequest = serde_json::from_str(r#"{"a":"us-east","b":"ap-south"}"#).unwrap();
        assert_eq!(link, PartitionRequest::link("us-east", "ap-south"));
    }
}
