//! A reload's decision for a live connection ([`recheck`]): what proved its user ([`Proof`])
//! must still prove it ([`credential_holds`]), and the channel and roles must still let it in
//! ([`access_holds`], the rule [`super::decide`] applies at the upgrade).

use rustls::pki_types::CertificateDer;

use super::close::CloseReason;
use super::decide::{Proof, channel_rights, route};
use crate::config::Config;

/// Who holds a live connection, as far as a reload needs to know to re-check it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// None for an anonymous client.
    pub user: Option<String>,
    /// Whether the user was let in to publish (so a reload that takes that away closes it).
    pub may_publish: bool,
    /// What proved the user.
    pub proof: Proof,
}

/// The credentials as they are now (after a reload), as [`recheck`] asks about them. The server
/// implements it over its loaded users, tokens and client CA; tests with a fake.
pub trait CredentialState {
    /// SHA-256 of `user`'s stored password hash; None if the users file has no such user.
    fn password_hash(&self, user: &str) -> Option<[u8; 32]>;
    /// The owner of the API token with this digest, if the tokens file still has it.
    fn token_owner(&self, digest: &[u8; 32]) -> Option<String>;
    /// `user`'s credential fingerprint (see `session::user_fingerprint`); None if the users file
    /// has no such user.
    fn fingerprint(&self, user: &str) -> Option<[u8; 8]>;
    /// Whether the current client CA still trusts this chain (and client certificates are on).
    fn client_cert_trusted(&self, chain: &[CertificateDer<'static>]) -> bool;
    /// Whether a session verified with the key `key_id` and started at `login_unix` would still
    /// be accepted: sessions on, the same key, and `session_max_age` not yet reached.
    fn session_accepted(&self, key_id: &[u8; 8], login_unix: u64) -> bool;
}

/// Why a reload ends a live connection. Each is a 1008 close with its own reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// What proved the user no longer does: user deleted, password changed, token revoked,
    /// session fingerprint changed, client certificate no longer trusted.
    Credential,
    /// The credential holds, but the path is no longer served or the roles no longer allow
    /// subscribing (or publishing, for a connection let in to publish).
    Access,
    /// An admin ended it (`POST /disconnect` on the admin API, here or on another instance).
    Admin,
}

impl Revocation {
    /// The close frame's reason text.
    #[must_use]
    pub fn close_reason(self) -> CloseReason {
        match self {
            Revocation::Credential => CloseReason::CREDENTIAL_REVOKED,
            Revocation::Access => CloseReason::ACCESS_REVOKED,
            Revocation::Admin => CloseReason::DISCONNECTED_BY_ADMIN,
        }
    }
}

/// Whether a live connection may stay after a reload: its credential must still prove its user
/// ([`credential_holds`]), and the channel and roles must still let it in ([`access_holds`]).
/// The server calls it for every live connection on each reload.
///
/// # Errors
/// The [`Revocation`] that ends the connection.
pub fn recheck(
    holder: &Holder,
    path: &str,
    config: &Config,
    state: &dyn CredentialState,
) -> Result<(), Revocation> {
    if !credential_holds(holder.user.as_deref(), &holder.proof, state) {
        return Err(Revocation::Credential);
    }
    if !access_holds(holder, path, config) {
        return Err(Revocation::Access);
    }
    Ok(())
}

/// Whether `config` still lets `holder` use `path`: a channel still serves it, and the rule the
/// upgrade applied ([`channel_rights`]: anonymous only where the channel allows it, a role to
/// subscribe) still lets the holder in; a connection let in to publish must still be allowed to
/// publish (it is closed, not quietly made read-only).
#[must_use]
pub fn access_holds(holder: &Holder, path: &str, config: &Config) -> bool {
    route(path, config)
        .ok()
        .and_then(|channel| channel_rights(config, channel, holder.user.as_deref(), path).ok())
        .is_some_and(|allowed| allowed.may_publish || !holder.may_publish)
}

/// Whether `proof` still proves `user`: the same password hash; the same token, still the user's,
/// and the user still in the users file (a deleted user's tokens are orphaned); the same
/// credential fingerprint for a session (which a password change, deletion or any change to the
/// user's tokens alters), still signed with the current key and within `session_max_age`; a
/// client certificate the current client CA still trusts.
#[must_use]
pub fn credential_holds(user: Option<&str>, proof: &Proof, state: &dyn CredentialState) -> bool {
    match (proof, user) {
        (Proof::Anonymous, None) => true,
        (Proof::Password { hash }, Some(user)) => state.password_hash(user) == Some(*hash),
        (Proof::ApiToken { digest }, Some(user)) => {
            state.token_owner(digest).as_deref() == Some(user)
                && state.password_hash(user).is_some()
        }
        (
            Proof::Session {
                fingerprint,
                login_unix,
                key_id,
            },
            Some(user),
        ) => {
            state.fingerprint(user) == Some(*fingerprint)
                && state.session_accepted(key_id, *login_unix)
        }
        (Proof::ClientCert { chain }, Some(_)) => state.client_cert_trusted(chain),
        // A user without a proof, or a proof without a user: never issued; end it.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::*;

    /// Credentials as a reload sees them: alice's password hash is [1;32], token [2;32] is
    /// bob's, carol's fingerprint is [3;8], certificates signed "good" are trusted.
    struct Now {
        deleted: &'static [&'static str],
    }

    impl CredentialState for Now {
        fn password_hash(&self, user: &str) -> Option<[u8; 32]> {
            (!self.deleted.contains(&user)).then_some(if user == "alice" {
                [1; 32]
            } else {
                [9; 32]
            })
        }
        fn token_owner(&self, digest: &[u8; 32]) -> Option<String> {
            (*digest == [2; 32]).then(|| "bob".to_string())
        }
        fn fingerprint(&self, user: &str) -> Option<[u8; 8]> {
            self.password_hash(user).map(|_| [3; 8])
        }
        fn client_cert_trusted(&self, chain: &[CertificateDer<'static>]) -> bool {
            chain.first().is_some_and(|c| c.as_ref() == b"good")
        }
        // Key [6;8]; sessions that started before 10 are past their max age.
        fn session_accepted(&self, key_id: &[u8; 8], login_unix: u64) -> bool {
            *key_id == [6; 8] && login_unix >= 10
        }
    }

    fn holder(user: Option<&str>, proof: Proof) -> Holder {
        Holder {
            user: user.map(str::to_string),
            may_publish: false,
            proof,
        }
    }

    #[test]
    fn recheck_asks_each_credential_kind_whether_it_still_holds() {
        let cfg = config();
        let now = Now { deleted: &[] };
        let session_with = |login_unix, key_id| Proof::Session {
            fingerprint: [3; 8],
            login_unix,
            key_id,
        };
        let session = session_with(10, [6; 8]);
        let cert = |der: &'static [u8]| Proof::ClientCert {
            chain: vec![CertificateDer::from(der)],
        };
        let cases: &[(Option<&str>, Proof, Result<(), Revocation>)] = &[
            (Some("alice"), Proof::Password { hash: [1; 32] }, Ok(())),
            // A new password: the old one no longer proves alice.
            (
                Some("alice"),
                Proof::Password { hash: [7; 32] },
                Err(Revocation::Credential),
            ),
            (Some("bob"), Proof::ApiToken { digest: [2; 32] }, Ok(())),
            // Revoked token; a token that is someone else's.
            (
                Some("bob"),
                Proof::ApiToken { digest: [5; 32] },
                Err(Revocation::Credential),
            ),
            (
                Some("alice"),
                Proof::ApiToken { digest: [2; 32] },
                Err(Revocation::Credential),
            ),
            (Some("carol"), session.clone(), Ok(())),
            (
                Some("carol"),
                Proof::Session {
                    fingerprint: [4; 8],
                    login_unix: 10,
                    key_id: [6; 8],
                },
                Err(Revocation::Credential),
            ),
            // Signed with a key that was replaced since; past session_max_age.
            (
                Some("carol"),
                session_with(10, [7; 8]),
                Err(Revocation::Credential),
            ),
            (
                Some("carol"),
                session_with(9, [6; 8]),
                Err(Revocation::Credential),
            ),
            (Some("dave"), cert(b"good"), Ok(())),
            (Some("dave"), cert(b"other CA"), Err(Revocation::Credential)),
            (
                Some("dave"),
                Proof::ClientCert { chain: vec![] },
                Err(Revocation::Credential),
            ),
            (None, Proof::Anonymous, Err(Revocation::Access)), // /echo is not anonymous
            (Some("x"), Proof::Anonymous, Err(Revocation::Credential)),
        ];
        for (user, proof, want) in cases {
            let got = recheck(&holder(*user, proof.clone()), "/echo", &cfg, &now);
            assert_eq!(got, *want, "{user:?} {proof:?}");
        }
        // Deleting bob orphans his token and ends his session; alice is untouched.
        let gone = Now { deleted: &["bob"] };
        let bob_token = holder(Some("bob"), Proof::ApiToken { digest: [2; 32] });
        assert_eq!(
            recheck(&bob_token, "/echo", &cfg, &gone),
            Err(Revocation::Credential)
        );
        assert_eq!(
            recheck(&holder(Some("bob"), session), "/echo", &cfg, &gone),
            Err(Revocation::Credential)
        );
        let alice = holder(Some("alice"), Proof::Password { hash: [1; 32] });
        assert_eq!(recheck(&alice, "/echo", &cfg, &gone), Ok(()));
        // The credential holds but the roles no longer allow: access revoked.
        assert_eq!(
            recheck(&alice, "/private", &cfg, &now),
            Err(Revocation::Access)
        );
        let publisher = Holder {
            may_publish: true,
            ..alice.clone()
        };
        assert_eq!(
            recheck(&publisher, "/feed", &cfg, &now),
            Err(Revocation::Access)
        );
        assert_eq!(recheck(&publisher, "/chat/a", &cfg, &now), Ok(()));
        assert_eq!(
            Revocation::Credential.close_reason(),
            CloseReason::CREDENTIAL_REVOKED
        );
    }

    /// A reload's access check against the upgrade's, case by case: under the config a reload
    /// brings, a connection stays exactly when [`decide`] would let it in again (and, for one let
    /// in to publish, let it publish).
    #[test]
    fn access_holds_where_decide_would_let_the_connection_in_again() {
        let base = CHANNELS_AND_ROLES;
        let no_feed_role = base.replace(
            "subscribe = /echo, /chat/*, /feed",
            "subscribe = /echo, /chat/*",
        );
        let no_feed_channel = no_feed_role.replace("[channel:/feed]\nmode = broadcast\n", "");
        let public_needs_user = base.replace("anonymous = true\n", "");
        let own = "[channel:/user/*]\nmode = broadcast\n\
                   [role:users]\nmembers = *\nsubscribe = /user/%u/*\npublish = /user/%u/inbox\n";
        // (channels and roles, user, path, let in to publish, stays)
        let cases: &[(&str, Option<&str>, &str, bool, bool)] = &[
            (base, Some("alice"), "/feed", false, true),
            (base, Some("alice"), "/chat/a", true, true),
            // Lost publish: /feed may still be read, no longer written.
            (base, Some("alice"), "/feed", true, false),
            // Lost subscribe: the role no longer names /feed.
            (no_feed_role.as_str(), Some("alice"), "/feed", false, false),
            // The channel removed.
            (
                no_feed_channel.as_str(),
                Some("alice"),
                "/feed",
                false,
                false,
            ),
            // No role at all.
            (base, Some("alice"), "/private", false, false),
            // Anonymous: only on an anonymous channel, under the `anonymous` role.
            (base, None, "/public", false, true),
            (base, None, "/echo", false, false),
            (public_needs_user.as_str(), None, "/public", false, false),
            // %u: one's own paths only.
            (own, Some("alice"), "/user/alice/feed", false, true),
            (own, Some("alice"), "/user/alice/inbox", true, true),
            (own, Some("alice"), "/user/alice/feed", true, false),
            (own, Some("alice"), "/user/bob/feed", false, false),
        ];
        for &(channels_and_roles, user, path, may_publish, stays) in cases {
            let cfg = config_with(channels_and_roles);
            let holder = Holder {
                user: user.map(str::to_string),
                may_publish,
                proof: Proof::Anonymous,
            };
            let case = format!("{user:?} {path} publish={may_publish}");
            assert_eq!(access_holds(&holder, path, &cfg), stays, "{case}");
            // The upgrade, under the same config (alice proves herself with her password).
            let credentials = if user.is_some() {
                "Authorization: Basic YWxpY2U6cHc=\r\n"
            } else {
                ""
            };
            let upgrade = get(&cfg, path, &format!("{credentials}{ORIGIN}"));
            let let_in = upgrade.is_ok_and(|grant| grant.may_publish || !may_publish);
            assert_eq!(let_in, stays, "decide: {case}");
        }
    }
}
