//! Just enough of the PostgreSQL frontend/backend protocol (version 3) to
//! run simple queries over a tokio `TcpStream`: startup with `trust`
//! authentication (the adapter's own server is initialised that way), the
//! simple-query cycle (`Q` → rows, command tags, errors → `Z`), and
//! terminate. Values travel as text; every length read is bounded.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest backend message accepted.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most rows one query may return.
pub const ROWS_MAX: usize = 1_000_000;
/// Most messages read while starting up (parameter statuses and notices).
pub const STARTUP_MESSAGES_MAX: usize = 1_000;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server answered with an ErrorResponse; the connection is usable.
    #[error("postgres error {code}: {message}")]
    Server {
        /// SQLSTATE, e.g. `40P01` (deadlock detected).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The connection broke or spoke nonsense; drop it.
    #[error("postgres connection: {0}")]
    Io(#[from] io::Error),
}

impl PgError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            PgError::Server { code, .. } => Some(code),
            PgError::Io(_) => None,
        }
    }
}

/// What a simple query returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Command tags, one per statement (`UPDATE 1`, `INSERT 0 1`, `BEGIN`).
    pub tags: Vec<String>,
    /// Rows of every statement, as text (`None` is SQL NULL).
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// Rows affected by the last statement (the number ending its tag).
    pub fn affected(&self) -> u64 {
        self.tags
            .last()
            .and_then(|t| t.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// Quotes a string as an SQL literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One connection.
pub struct Connection {
    stream: BufReader<TcpStream>,
    /// Transaction status from the last ReadyForQuery: `I` idle, `T` in a
    /// transaction, `E` in a failed transaction.
    pub status: u8,
}

impl Connection {
    /// Connects to `addr` as `user` to `database`, with trust authentication.
    pub async fn connect(addr: &str, user: &str, database: &str) -> Result<Connection, PgError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream: BufReader::new(stream),
            status: b'I',
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        conn.stream.get_mut().write_all(&msg).await?;
        for _ in 0..STARTUP_MESSAGES_MAX {
            let (kind, body) = conn.read_message().await?;
            match kind {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map_or(-1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    if code != 0 {
                        return Err(PgError::Io(bad(format!(
                            "postgres asks for authentication method {code}; only trust is supported"
                        ))));
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'Z' => {
                    conn.status = body.first().copied().unwrap_or(b'I');
                    return Ok(conn);
                }
                _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
            }
        }
        Err(PgError::Io(bad("postgres startup did not finish")))
    }

    async fn read_message(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let kind = self.stream.read_u8().await?;
        let len = self.stream.read_i32().await?;
        if len < 4 || len as usize - 4 > MESSAGE_BYTES_MAX {
            return Err(bad(format!("backend message of length {len}")));
        }
        let mut body = vec![0u8; len as usize - 4];
        self.stream.read_exact(&mut body).await?;
        Ok((kind, body))
    }

    /// Runs `sql` (one or more statements) with the simple-query protocol
    /// and reads everything up to ReadyForQuery.
    pub async fn simple(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.get_mut().write_all(&msg).await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let (kind, body) = self.read_message().await?;
            match kind {
                b'D' => {
                    if result.rows.len() >= ROWS_MAX {
                        return Err(PgError::Io(bad(format!("more than {ROWS_MAX} rows"))));
                    }
                    result.rows.push(parse_row(&body)?);
                }
                b'C' => result.tags.push(cstring(&body)),
                b'E' => error = Some(server_error(&body)),
                b'Z' => {
                    self.status = body.first().copied().unwrap_or(b'I');
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(result),
                    };
                }
                _ => {} // RowDescription, EmptyQueryResponse, notices
            }
        }
    }

    /// Says goodbye; errors are ignored (the connection is going anyway).
    pub async fn close(mut self) {
        let _ = self.stream.get_mut().write_all(&[b'X', 0, 0, 0, 4]).await;
    }
}

fn cstring(body: &[u8]) -> String {
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).to_string()
}

fn server_error(body: &[u8]) -> PgError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).to_string(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).to_string(),
            _ => {}
        }
    }
    PgError::Server { code, message }
}

fn parse_row(body: &[u8]) -> io::Result<Vec<Option<String>>> {
    let short = || bad("truncated DataRow");
    let n = u16::from_be_bytes([*body.first().ok_or_else(short)?, *body.get(1).ok_or_else(short)?]);
    let mut at = 2;
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len_bytes = body.get(at..at + 4).ok_or_else(short)?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = body.get(at..at + len as usize).ok_or_else(short)?;
            row.push(Some(String::from_utf8_lossy(v).to_string()));
            at += len as usize;
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Literals are quoted with doubled quotes; tags give affected rows;
    /// DataRows parse with NULLs.
    #[test]
    fn helpers() {
        assert_eq!(literal("a'b"), "'a''b'");
        let r = QueryResult {
            tags: vec!["BEGIN".into(), "UPDATE 3".into()],
            rows: vec![],
        };
        assert_eq!(r.affected(), 3);
        let mut body = vec![0, 2];
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(parse_row(&body).unwrap(), vec![Some("hi".into()), None]);
        assert!(parse_row(&[0, 1, 0]).is_err());
        match server_error(b"SERROR\0C40P01\0Mdeadlock detected\0\0") {
            PgError::Server { code, message } => {
                assert_eq!(code, "40P01");
                assert_eq!(message, "deadlock detected");
            }
            other => panic!("{other:?}"),
        }
    }
}
