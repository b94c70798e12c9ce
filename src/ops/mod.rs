//! The operations both front doors call (the command line in `cli`, the
//! management API): each checks what it is asked, calls `db` and returns a
//! typed result or a typed error, so that a rule exists once, below both
//! doors. Parsing arguments and printing (or encoding JSON) stay in the
//! doors; SQL stays in `db`.

pub mod prune;
