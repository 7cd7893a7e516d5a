//! Just enough of RESP2 (the Redis protocol) over a tokio `TcpStream` to send
//! commands and read their replies: arrays of bulk strings out; simple
//! strings, errors, integers, bulk strings and arrays in. Every length read
//! from the wire is bounded.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest bulk string accepted in a reply.
pub const BULK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most elements of one reply array.
pub const ARRAY_LEN_MAX: usize = 1_000_000;
/// Deepest nesting of reply arrays.
pub const DEPTH_MAX: usize = 4;
/// Longest header line (`+OK`, `:42`, `$5`).
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Simple(String),
    /// `-...`: the server refused the command.
    Error(String),
    /// `:...`
    Int(i64),
    /// `$...`; `None` is the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*...`; `None` is the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// One connection to a Redis server.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Connection {
    /// Connects to `addr` (`127.0.0.1:PORT`).
    pub async fn connect(addr: &str) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply. A `-ERR` reply is returned as
    /// [`Reply::Error`], not as an `Err`: `Err` means the connection is
    /// broken and must be dropped.
    pub async fn call(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out).await?;
        self.read_reply().await
    }

    async fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(bad("reply line too long or not CRLF-terminated"));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| bad("reply line is not UTF-8"))
    }

    async fn read_reply(&mut self) -> io::Result<Reply> {
        // Arrays are read iteratively with an explicit stack, so nesting is
        // bounded without async recursion.
        let mut stack: Vec<(usize, Vec<Reply>)> = Vec::new();
        loop {
            let line = self.read_line().await?;
            let (kind, rest) = line.split_at(line.len().min(1));
            let mut value = match kind {
                "+" => Reply::Simple(rest.to_string()),
                "-" => Reply::Error(rest.to_string()),
                ":" => Reply::Int(rest.parse().map_err(|_| bad(format!("bad integer {rest:?}")))?),
                "$" => {
                    let len: i64 = rest
                        .parse()
                        .map_err(|_| bad(format!("bad bulk length {rest:?}")))?;
                    if len < 0 {
                        Reply::Bulk(None)
                    } else if len as usize > BULK_BYTES_MAX {
                        return Err(bad(format!("bulk string of {len} bytes over {BULK_BYTES_MAX}")));
                    } else {
                        let mut buf = vec![0u8; len as usize + 2];
                        self.stream.read_exact(&mut buf).await?;
                        buf.truncate(len as usize);
                        Reply::Bulk(Some(buf))
                    }
                }
                "*" => {
                    let len: i64 = rest
                        .parse()
                        .map_err(|_| bad(format!("bad array length {rest:?}")))?;
                    if len < 0 {
                        Reply::Array(None)
                    } else if len as usize > ARRAY_LEN_MAX {
                        return Err(bad(format!("array of {len} elements over {ARRAY_LEN_MAX}")));
                    } else if len == 0 {
                        Reply::Array(Some(Vec::new()))
                    } else {
                        if stack.len() >= DEPTH_MAX {
                            return Err(bad("reply arrays nested too deep"));
                        }
                        stack.push((len as usize, Vec::with_capacity((len as usize).min(1024))));
                        continue;
                    }
                }
                _ => return Err(bad(format!("unknown reply type in {line:?}"))),
            };
            // Fold finished values into their arrays.
            loop {
                match stack.last_mut() {
                    None => return Ok(value),
                    Some((want, items)) => {
                        items.push(value);
                        if items.len() < *want {
                            break;
                        }
                        let (_, items) = stack.pop().unwrap_or_default();
                        value = Reply::Array(Some(items));
                    }
                }
            }
        }
    }
}
