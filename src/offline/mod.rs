//! Lines through the rules without a broker or a listener: `hotdog -t FILE` replays a log file,
//! `hotdog test` runs the rule tests of a test file.

pub mod cost;
pub mod replay;
pub mod ruletest;
