//! Identity and tokens: who is asking (file users, LDAP) and what a token
//! carries. The policy engine that decides what they may do is in `policy`.

pub mod keys;
pub mod scope;
pub mod token;
pub mod users;
pub mod users_file;
