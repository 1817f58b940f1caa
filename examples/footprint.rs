//! Prints what a stopped aggregatord's database holds against what its files
//! take, for the storage benchmarks (bench/storage, bench/live):
//! `data_bytes=N disk_bytes=M`. Opening it folds what the journal holds, as
//! aggregatord's next start would.
//!
//!   `cargo run --release --example footprint -- DB_DIR`

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: footprint DB_DIR"))?;
    let store = roomsense::store::Store::open(std::path::Path::new(&dir))?;
    let f = store.footprint()?;
    println!("data_bytes={} disk_bytes={}", f.data_bytes, f.disk_bytes);
    Ok(())
}
