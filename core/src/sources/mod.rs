//! Built-in sources.

mod generate;

pub use generate::Generate;
