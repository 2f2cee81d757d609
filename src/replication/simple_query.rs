//! The simple-query flow's response: collecting rows (text columns, `None`
//! for NULL), column names and command tags from the server's messages until
//! ReadyForQuery.
//!
//! [`QueryCollector`] is pure: the connection feeds it one message at a time
//! and it says whether the response is complete. An ErrorResponse is kept and
//! the collector goes on to ReadyForQuery, so the connection stays usable.

use postgres_protocol::message::backend::{DataRowBody, Message};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::errors::ServerError;
use super::wire::BackendMessage;

/// Everything a simple query returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResponse {
    /// Column names of the last result set that had a row description.
    pub columns: Vec<String>,
    /// Rows of every statement, in order; text values, `None` for NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// One command tag per statement (`SELECT 1`, `CREATE_REPLICATION_SLOT`, …).
    pub command_tags: Vec<String>,
}

impl QueryResponse {
    /// The index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// Whether the collector needs more messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep reading.
    More,
    /// ReadyForQuery arrived: the response is complete.
    Done,
}

/// Why a message could not be part of a simple-query response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A message that does not belong in this flow (COPY, authentication, …).
    Unexpected(&'static str),
    /// A message that is malformed.
    Malformed(String),
}

/// Collects one simple query's response.
#[derive(Default)]
pub(crate) struct QueryCollector {
    response: QueryResponse,
    error: Option<ServerError>,
}

impl QueryCollector {
    /// Take one message. Asynchronous messages (notices, parameter status)
    /// are the connection's business and must not be passed in.
    pub(crate) fn accept(&mut self, msg: BackendMessage) -> Result<Step, Violation> {
        let msg = match msg {
            BackendMessage::Protocol(msg) => msg,
            other => return Err(Violation::Unexpected(other.name())),
        };
        match msg {
            Message::RowDescription(body) => {
                self.response.columns =
                    body.fields().map(|f| Ok(f.name().to_string())).collect().map_err(|e| Violation::Malformed(format!("RowDescription: {e}")))?;
            }
            Message::DataRow(body) => {
                let row = text_row(&body).map_err(Violation::Malformed)?;
                self.response.rows.push(row);
            }
            Message::CommandComplete(body) => {
                let tag = body.tag().map_err(|e| Violation::Malformed(format!("CommandComplete: {e}")))?;
                self.response.command_tags.push(tag.to_string());
            }
            Message::EmptyQueryResponse => {}
            Message::ErrorResponse(body) => {
                let e = ServerError::parse(body.fields()).map_err(|e| Violation::Malformed(format!("ErrorResponse: {e}")))?;
                // The first error ends the query string; keep it.
                self.error.get_or_insert(e);
            }
            Message::ReadyForQuery(_) => return Ok(Step::Done),
            other => {
                return Err(Violation::Unexpected(BackendMessage::Protocol(other).name()));
            }
        }
        Ok(Step::More)
    }

    /// The response, or the server's error.
    pub(crate) fn finish(self) -> Result<QueryResponse, ServerError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.response),
        }
    }
}

/// A DataRow's values as text.
fn text_row(body: &DataRowBody) -> Result<Vec<Option<String>>, String> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges.next().map_err(|e| format!("DataRow: {e}"))? {
        let value = match range {
            None => None,
            Some(r) => {
                let bytes = buf.get(r).ok_or("DataRow: a value is out of bounds")?;
                let text = std::str::from_utf8(bytes).map_err(|_| "DataRow: a value is not UTF-8")?;
                Some(text.to_string())
            }
        };
        row.push(value);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::replication::wire::parse_backend_message;
    use crate::replication::wire::test_messages::*;

    fn run(parts: &[Vec<u8>]) -> (Vec<Step>, QueryCollector) {
        let mut buf = BytesMut::new();
        for p in parts {
            buf.extend_from_slice(p);
        }
        let mut collector = QueryCollector::default();
        let mut steps = Vec::new();
        while let Some(msg) = parse_backend_message(&mut buf).unwrap() {
            steps.push(collector.accept(msg).unwrap());
        }
        (steps, collector)
    }

    #[test]
    fn rows_columns_and_tags_are_collected() {
        let (steps, collector) = run(&[
            row_description(&["slot_name", "consistent_point", "snapshot_name", "output_plugin"]),
            data_row(&[Some("s1"), Some("0/15D6A28"), None, Some("pgoutput")]),
            command_complete("CREATE_REPLICATION_SLOT"),
            ready_for_query(),
        ]);
        assert_eq!(steps.last(), Some(&Step::Done));
        assert!(steps[..steps.len() - 1].iter().all(|s| *s == Step::More));
        let response = collector.finish().unwrap();
        assert_eq!(response.column("snapshot_name"), Some(2));
        assert_eq!(response.column("nope"), None);
        assert_eq!(response.rows, vec![vec![Some("s1".to_string()), Some("0/15D6A28".to_string()), None, Some("pgoutput".to_string())]]);
        assert_eq!(response.command_tags, vec!["CREATE_REPLICATION_SLOT".to_string()]);
    }

    #[test]
    fn several_statements_and_empty_queries() {
        let (_, collector) = run(&[
            row_description(&["a"]),
            data_row(&[Some("1")]),
            command_complete("SELECT 1"),
            command_complete("SET"),
            frame(b'I', b""),
            row_description(&["b"]),
            data_row(&[Some("")]),
            data_row(&[None]),
            command_complete("SELECT 2"),
            ready_for_query(),
        ]);
        let response = collector.finish().unwrap();
        assert_eq!(response.columns, vec!["b".to_string()]);
        assert_eq!(response.rows, vec![vec![Some("1".into())], vec![Some(String::new())], vec![None]]);
        assert_eq!(response.command_tags, vec!["SELECT 1", "SET", "SELECT 2"]);
    }

    #[test]
    fn an_error_is_kept_until_ready_for_query() {
        let (steps, collector) = run(&[error_response(b'E', "ERROR", "57014", "canceling statement due to user request", None), ready_for_query()]);
        assert_eq!(steps, vec![Step::More, Step::Done]);
        let e = collector.finish().unwrap_err();
        assert_eq!(e.code(), "57014");
        assert_eq!(e.message(), "canceling statement due to user request");
    }

    #[test]
    fn copy_responses_are_violations() {
        let mut collector = QueryCollector::default();
        let mut buf = BytesMut::from(&frame(b'W', &[0, 0, 0])[..]);
        let msg = parse_backend_message(&mut buf).unwrap().unwrap();
        assert_eq!(collector.accept(msg), Err(Violation::Unexpected("CopyBothResponse")));
        let mut buf = BytesMut::from(&frame(b'H', &[0, 0, 0])[..]);
        let msg = parse_backend_message(&mut buf).unwrap().unwrap();
        assert_eq!(collector.accept(msg), Err(Violation::Unexpected("CopyOutResponse")));
    }

    #[test]
    fn malformed_rows_are_violations_not_panics() {
        let mut collector = QueryCollector::default();
        // Two columns announced, one present.
        let mut buf = BytesMut::from(&frame(b'D', &[0, 2, 0, 0, 0, 1, b'x'])[..]);
        let msg = parse_backend_message(&mut buf).unwrap().unwrap();
        assert!(matches!(collector.accept(msg), Err(Violation::Malformed(_))));
        let mut buf = BytesMut::from(&frame(b'D', &[0, 1, 0, 0, 0, 1, 0xff])[..]);
        let msg = parse_backend_message(&mut buf).unwrap().unwrap();
        assert!(matches!(collector.accept(msg), Err(Violation::Malformed(_))));
    }
}
