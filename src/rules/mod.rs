//! The access rules as values, below the config that parses into them and the policy that
//! applies them: [`acl`] roles, their members, path and channel patterns and who may subscribe or
//! publish; [`origin`] the allowed `Origin`s; [`user_name`] what a user name may be. Pure: no
//! I/O, no logging, and nothing from the rest of the crate.

pub(crate) mod acl;
pub(crate) mod origin;
pub mod user_name;
