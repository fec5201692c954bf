//! Section `blobs` (being written).

use crate::Options;
use crate::report::Row;
use crate::servers::Servers;

pub async fn run(_servers: &Servers, _options: &Options) -> Vec<Row> {
    Vec::new()
}
