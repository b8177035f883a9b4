fn main() -> anyhow::Result<()> {
    let mut dp = dnsfast::bpf::Dataplane::load(&Default::default())?;
    println!("{:?}", dp.counters()?);
    let _ = dp.program()?;
    Ok(())
}
