//! `sluice pause CHANNEL` / `sluice resume CHANNEL`: ask the running
//! daemon, through its HTTP API, to stop or restart a channel's pumps.
//! Pauses live in the daemon, so there is nothing to do without one.

use anyhow::{Context as _, bail};
use clap::Args;

use crate::api::client;
use crate::config::Config;

/// `sluice pause` / `sluice resume` arguments.
#[derive(Debug, Args)]
pub struct ChannelArgs {
    /// The channel.
    pub channel: String,
}

pub(super) async fn channel(
    config: &Config,
    action: &str,
    args: ChannelArgs,
) -> anyhow::Result<()> {
    let Some(http) = &config.http else {
        bail!("no daemon API address: pass --http ADDR (or set [http] addr in the config file)");
    };
    crate::names::check_channel(&args.channel)?;
    let path = format!("/v1/channels/{}/{action}", args.channel);
    let (status, body) = client::call(http.addr, "POST", &path, http.token.as_deref()).await?;
    let json: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("the daemon answered {status} with a body that is not JSON"))?;
    if status != 200 {
        let error = json["error"].as_str().unwrap_or("no error message");
        bail!("the daemon refused ({status}): {error}");
    }
    let changed = json["changed"].as_bool().unwrap_or(false);
    let verb = if action == "pause" {
        "paused"
    } else {
        "resumed"
    };
    if changed {
        println!("{} {verb}", args.channel);
    } else {
        println!("{} was already {verb}", args.channel);
    }
    Ok(())
}
