use clap::Args as ClapArgs;
#[derive(ClapArgs)]
pub struct Args {}
pub fn run(_: &Args) -> anyhow::Result<()> {
    Ok(())
}
