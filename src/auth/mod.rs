//! Identity and tokens: who is asking (file users, LDAP) and what a token
//! carries. The policy engine that decides what they may do is in `policy`.

pub mod scope;
pub mod users;
