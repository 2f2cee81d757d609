//! Authentication after the startup message: trust, cleartext password, MD5,
//! SCRAM-SHA-256, and SCRAM-SHA-256-PLUS with `tls-server-end-point` channel
//! binding when the connection is encrypted.
//!
//! The hashing and the SCRAM state machine are postgres-protocol's
//! (`authentication::md5_hash`, `authentication::sasl::ScramSha256`); this file
//! drives the exchange and picks the mechanism. Neither the password nor any
//! SASL message is ever logged or put into an error.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::errors::{ServerError, io_error, protocol_error, server_error};
use super::wire::{BackendMessage, MessageStream};
use crate::config::DbSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::pg::errors::{HINT_PASSWORD, Phase, server_label};

/// How the server authenticated us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// The server asked for nothing (`trust`, `peer`, …).
    Trust,
    /// A cleartext password.
    Cleartext,
    /// MD5.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS: SCRAM bound to the TLS channel.
    ScramSha256Plus,
}

impl AuthMethod {
    /// The method's usual name (the SASL mechanism name for SCRAM).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Cleartext => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => SCRAM_SHA_256,
            AuthMethod::ScramSha256Plus => SCRAM_SHA_256_PLUS,
        }
    }
}

/// The SCRAM mechanism and gs2 channel-binding flag to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScramChoice {
    /// SCRAM-SHA-256-PLUS bound to this certificate hash.
    Plus(Vec<u8>),
    /// SCRAM-SHA-256; we could bind, but the server offers no PLUS (gs2 `y`).
    ClientCouldBind,
    /// SCRAM-SHA-256; no binding possible here (no TLS, or a certificate
    /// algorithm without a binding hash; gs2 `n`).
    NoBinding,
}

impl ScramChoice {
    fn method(&self) -> AuthMethod {
        match self {
            ScramChoice::Plus(_) => AuthMethod::ScramSha256Plus,
            _ => AuthMethod::ScramSha256,
        }
    }

    fn mechanism(&self) -> &'static str {
        match self {
            ScramChoice::Plus(_) => SCRAM_SHA_256_PLUS,
            _ => SCRAM_SHA_256,
        }
    }

    fn into_binding(self) -> ChannelBinding {
        match self {
            ScramChoice::Plus(data) => ChannelBinding::tls_server_end_point(data),
            ScramChoice::ClientCouldBind => ChannelBinding::unrequested(),
            ScramChoice::NoBinding => ChannelBinding::unsupported(),
        }
    }
}

/// Pick the SCRAM mechanism from the server's list: PLUS whenever we have
/// binding data and the server offers it (choosing plain SCRAM with gs2 `y`
/// when it does would make the server suspect a downgrade and refuse).
pub(crate) fn choose_scram(offered: &[String], binding: Option<Vec<u8>>) -> Option<ScramChoice> {
    let has = |m: &str| offered.iter().any(|o| o == m);
    match binding {
        Some(data) if has(SCRAM_SHA_256_PLUS) => Some(ScramChoice::Plus(data)),
        Some(_) if has(SCRAM_SHA_256) => Some(ScramChoice::ClientCouldBind),
        None if has(SCRAM_SHA_256) => Some(ScramChoice::NoBinding),
        _ => None,
    }
}

/// Answer the server's authentication requests until AuthenticationOk.
///
/// `binding` is the certificate hash for channel binding (TLS only).
pub(crate) async fn authenticate<S>(stream: &mut MessageStream<S>, db: &DbSettings, binding: Option<Vec<u8>>) -> Result<AuthMethod>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server = server_label(db);
    let mut binding = binding;
    let mut method = AuthMethod::Trust;
    let mut scram: Option<ScramSha256> = None;
    let mut scram_finished = false;
    loop {
        let msg = stream.read_message().await.map_err(|e| io_error(e, db, Phase::Connect))?;
        let msg = match msg {
            BackendMessage::Protocol(msg) => msg,
            other => return Err(unexpected(db, &other)),
        };
        match msg {
            Message::AuthenticationOk => {
                if scram.is_some() && !scram_finished {
                    return Err(Error::new(
                        ErrorKind::Auth,
                        format!("server {server} ended SCRAM authentication for user {} without proving it knows the password", db.user),
                    ));
                }
                return Ok(method);
            }
            Message::AuthenticationCleartextPassword => {
                let password = password(db)?;
                frontend::password_message(password.as_bytes(), stream.write_buf()).map_err(|_| nul_in_password(db))?;
                method = AuthMethod::Cleartext;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password(db)?;
                let hash = md5_hash(db.user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), stream.write_buf()).map_err(|_| nul_in_password(db))?;
                method = AuthMethod::Md5;
            }
            Message::AuthenticationSasl(body) => {
                let password = password(db)?;
                let offered: Vec<String> = body.mechanisms().map(|m| Ok(m.to_string())).collect().map_err(|e| io_error(e, db, Phase::Connect))?;
                let choice = choose_scram(&offered, binding.take()).ok_or_else(|| {
                    let error = Error::new(
                        ErrorKind::Auth,
                        format!("server {server} offers no SASL mechanism pgkeep supports for user {} (offered: {})", db.user, offered.join(", ")),
                    );
                    if offered.iter().any(|m| m == SCRAM_SHA_256_PLUS) {
                        error.with_hint(
                            "SCRAM-SHA-256-PLUS needs TLS with a certificate that supports channel binding: \
                             set sslmode=require or verify-full",
                        )
                    } else {
                        error.with_hint("use scram-sha-256 or md5 authentication in pg_hba.conf")
                    }
                })?;
                method = choice.method();
                let mechanism = choice.mechanism();
                let state = ScramSha256::new(password.as_bytes(), choice.into_binding());
                frontend::sasl_initial_response(mechanism, state.message(), stream.write_buf()).map_err(|e| io_error(e, db, Phase::Connect))?;
                scram = Some(state);
            }
            Message::AuthenticationSaslContinue(body) => {
                let state = scram.as_mut().ok_or_else(|| protocol_error(db, "SASL continue message before SASL started"))?;
                state.update(body.data()).map_err(|e| scram_error(db, e))?;
                frontend::sasl_response(state.message(), stream.write_buf()).map_err(|e| io_error(e, db, Phase::Connect))?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let state = scram.as_mut().ok_or_else(|| protocol_error(db, "SASL final message before SASL started"))?;
                state.finish(body.data()).map_err(|e| scram_error(db, e))?;
                scram_finished = true;
                continue;
            }
            Message::ErrorResponse(body) => {
                let e = ServerError::parse(body.fields()).map_err(|e| io_error(e, db, Phase::Connect))?;
                return Err(server_error(e, db, Phase::Connect));
            }
            Message::NoticeResponse(_) => continue,
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(Error::new(
                    ErrorKind::Auth,
                    format!("server {server} asks user {} for GSSAPI/SSPI/Kerberos authentication, which pgkeep does not support", db.user),
                )
                .with_hint("use password or scram-sha-256 authentication in pg_hba.conf"));
            }
            other => {
                return Err(unexpected(db, &BackendMessage::Protocol(other)));
            }
        }
        stream.flush().await.map_err(|e| io_error(e, db, Phase::Connect))?;
    }
}

/// The password, or an Auth error when the server asks for one and none is set.
fn password(db: &DbSettings) -> Result<&str> {
    match &db.password {
        Some(p) => Ok(p.expose()),
        None => Err(Error::new(ErrorKind::Auth, format!("server {} asks for a password for user {} but none is set", server_label(db), db.user))
            .with_hint(HINT_PASSWORD)),
    }
}

fn nul_in_password(db: &DbSettings) -> Error {
    Error::config(format!("the password for user {} contains a NUL byte", db.user)).with_hint(crate::pg::errors::password_hint(db))
}

/// A SCRAM step failed: a malformed server message, a bad nonce, or a server
/// signature that does not verify (the server does not know the password).
/// postgres-protocol's texts name no secrets.
fn scram_error(db: &DbSettings, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Auth, format!("SCRAM authentication of user {} with server {} failed: {e}", db.user, server_label(db)))
}

fn unexpected(db: &DbSettings, msg: &BackendMessage) -> Error {
    protocol_error(db, &format!("unexpected {} during authentication", msg.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plus_is_chosen_whenever_binding_is_possible() {
        let both = offered(&[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
        assert_eq!(choose_scram(&both, Some(vec![1, 2])), Some(ScramChoice::Plus(vec![1, 2])));
        assert_eq!(choose_scram(&both, None), Some(ScramChoice::NoBinding));
        let plain = offered(&[SCRAM_SHA_256]);
        assert_eq!(choose_scram(&plain, Some(vec![1])), Some(ScramChoice::ClientCouldBind));
        assert_eq!(choose_scram(&plain, None), Some(ScramChoice::NoBinding));
        assert_eq!(choose_scram(&offered(&[SCRAM_SHA_256_PLUS]), None), None);
        assert_eq!(choose_scram(&offered(&["OAUTHBEARER"]), Some(vec![1])), None);
    }

    #[test]
    fn choice_names_mechanism_and_method() {
        assert_eq!(ScramChoice::Plus(vec![]).mechanism(), "SCRAM-SHA-256-PLUS");
        assert_eq!(ScramChoice::Plus(vec![]).method(), AuthMethod::ScramSha256Plus);
        assert_eq!(ScramChoice::NoBinding.mechanism(), "SCRAM-SHA-256");
        assert_eq!(ScramChoice::ClientCouldBind.method().as_str(), "SCRAM-SHA-256");
    }
}
