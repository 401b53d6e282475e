//! Who is subscribed to a path: this instance's subscribers, counted from the roster, and with
//! `[cluster]` the other instances' as the bridge last read them from Redis
//! ([`SharedPresence`]); the join and leave notices, here and to the other instances.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::history::{Presence, Sender, notice};
use super::{Hub, Outbound};

/// Subscribers of one path: each user (None: anonymous) with their open connections, in name
/// order.
pub type Tally = Vec<(Option<String>, usize)>;

/// The other instances' subscribers are not known: Redis did not answer in time, or has not
/// yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceUnavailable;

impl fmt::Display for PresenceUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the other instances' subscribers are not known: Redis does not answer")
    }
}

/// The other instances' subscribers, kept by the cluster bridge (`[cluster]`).
pub trait SharedPresence: Send + Sync {
    /// The subscribers of `path` on every other live instance, as last read from Redis.
    ///
    /// # Errors
    /// When that read is not recent enough to stand for now.
    fn others(&self, path: &str) -> Result<Tally, PresenceUnavailable>;

    /// This instance's subscribers changed: the bridge writes them to Redis soon.
    fn changed(&self);
}

/// Adds `more` to `tally`, keeping it in name order.
pub fn merge(tally: &mut Tally, more: Tally) {
    let mut all: BTreeMap<Option<String>, usize> = tally.drain(..).collect();
    for (user, n) in more {
        *all.entry(user).or_default() += n;
    }
    tally.extend(all);
}

impl Hub {
    /// Attaches the other instances' subscribers (`[cluster]`): from now on
    /// [`Hub::presence_everywhere`] adds them.
    pub(crate) fn set_presence(&self, shared: Arc<dyn SharedPresence>) {
        let _ = self.shared_presence.set(shared);
    }

    /// Who is subscribed to `path` on this instance now. Members still in their handshake,
    /// and those that take no broadcasts, are not subscribers.
    pub fn presence(&self, path: &str) -> Tally {
        self.roster
            .snapshot(path)
            .map_or_else(Vec::new, |members| tally(&members))
    }

    /// Who is subscribed to `path` on every instance: this one's now, and with `[cluster]` the
    /// others' as last read from Redis.
    ///
    /// # Errors
    /// With `[cluster]`, when the others' are not known (see [`SharedPresence::others`]).
    pub fn presence_everywhere(&self, path: &str) -> Result<Tally, PresenceUnavailable> {
        let mut here = self.presence(path);
        if let Some(shared) = self.shared_presence.get() {
            merge(&mut here, shared.others(path)?);
        }
        Ok(here)
    }

    /// Who is subscribed on this instance now, by path (paths without subscribers left out).
    pub(crate) fn presence_by_path(&self) -> BTreeMap<String, Tally> {
        self.roster
            .snapshots()
            .into_iter()
            .map(|(path, members)| (path, tally(&members)))
            .filter(|(_, tally)| !tally.is_empty())
            .collect()
    }

    /// This instance's subscribers changed (a connection opened or closed).
    pub(super) fn presence_changed(&self) {
        if let Some(shared) = self.shared_presence.get() {
            shared.changed();
        }
    }

    /// Tells the enveloped members of `path` here but member `from` that `who` joined or
    /// left, and the other instances too.
    pub(super) fn tell(&self, path: &str, from: u64, who: &Sender, what: Presence) {
        self.notify(path, Some(from), &notice(what, who));
        let outlet = self.outlet.read().unwrap_or_else(|p| p.into_inner());
        if let Some(outlet) = outlet.as_ref() {
            outlet.push(Outbound::Presence {
                path: path.to_string(),
                from: who.clone(),
                what,
            });
        }
    }

    /// Tells the enveloped members of `path` here that `who`, on another instance, joined or
    /// left.
    pub fn deliver_notice(&self, path: &str, who: &Sender, what: Presence) {
        self.notify(path, None, &notice(what, who));
    }
}

/// The subscribers among `members`: those that take broadcasts and whose handshake is done.
fn tally(members: &[Arc<super::member::Member>]) -> Tally {
    let mut who: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    for m in members {
        if m.receives && m.shared.profile.get().is_some() {
            *who.entry(m.shared.holder.user.as_deref()).or_default() += 1;
        }
    }
    who.into_iter()
        .map(|(user, n)| (user.map(str::to_string), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_tallies_add_up_per_user_in_name_order() {
        let mut here: Tally = vec![(None, 1), (Some("bob".into()), 2)];
        merge(
            &mut here,
            vec![
                (Some("alice".into()), 1),
                (Some("bob".into()), 1),
                (None, 3),
            ],
        );
        assert_eq!(
            here,
            [
                (None, 4),
                (Some("alice".into()), 1),
                (Some("bob".into()), 3)
            ]
        );
    }
}
