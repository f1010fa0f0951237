//! What the `loadgen` and `sweep` examples share: scenarios, the timed OpenAI client, the
//! closed and open load loops, statistics, and the results table, CSV and JSON lines.
//! Each example includes this tree with `#[path]`, as examples cannot depend on each other.

pub mod client;
pub mod cpu;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod sse;
pub mod stats;
