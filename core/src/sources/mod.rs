//! Built-in sources, and what table sources share.

mod generate;
pub mod table;

pub use generate::Generate;
pub use table::{rows_done, rows_position, TableRead, TableVersions, VersionEnumerator};
