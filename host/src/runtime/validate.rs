//! What a plugin may say about itself, checked once at load.
//!
//! Names and channels end up in NATS subjects, SQL rows, file names and log
//! lines, so they are kept to one safe alphabet (`crate::names`) rather
//! than escaped everywhere else. Limits are checked after resolution (the
//! plugin's ask capped by the operator's ceiling), because that is what
//! calls will use.

use super::types::{Limits, PluginInfo, PluginKind};
use crate::names;

/// Longest version string, in bytes.
const MAX_VERSION: usize = 200;

/// Checks `describe()`'s answer for a component that exports `world`.
pub(super) fn check_info(info: &PluginInfo, world: PluginKind) -> Result<(), String> {
    if info.name.is_empty() {
        return Err("describe() returned an empty name".into());
    }
    names::check_plugin_name(&info.name).map_err(|e| e.to_string())?;
    if info.version.len() > MAX_VERSION || info.version.chars().any(char::is_control) {
        return Err(format!(
            "plugin {}: version {} is invalid (at most {MAX_VERSION} bytes, no control characters)",
            info.name,
            names::quote(&info.version)
        ));
    }
    if info.kind != world {
        return Err(format!(
            "plugin {} says it is a {} but exports the {} interface",
            info.name,
            info.kind.as_str(),
            world.as_str()
        ));
    }
    if info.channels.is_empty() {
        return Err(format!("plugin {} lists no channels", info.name));
    }
    if info.channels.len() > names::MAX_CHANNELS_PER_PLUGIN {
        return Err(format!(
            "plugin {} lists {} channels; at most {} are allowed",
            info.name,
            info.channels.len(),
            names::MAX_CHANNELS_PER_PLUGIN
        ));
    }
    for (i, channel) in info.channels.iter().enumerate() {
        names::check_channel(channel).map_err(|e| format!("plugin {}: {e}", info.name))?;
        if info.channels[..i].contains(channel) {
            return Err(format!(
                "plugin {}: channel {channel} is listed twice",
                info.name
            ));
        }
    }
    Ok(())
}

/// Checks resolved limits against the host's ceiling. `who` starts the
/// message: "plugin task-reminder", "the host overrides".
pub(super) fn check_limits(who: &str, limits: Limits, max_memory_bytes: u64) -> Result<(), String> {
    if limits.fuel == 0 {
        return Err(format!("{who}: fuel limit must be above zero"));
    }
    if limits.timeout_ms == 0 {
        return Err(format!("{who}: timeout must be above zero"));
    }
    if limits.memory_bytes == 0 {
        return Err(format!("{who}: memory limit must be above zero"));
    }
    if limits.memory_bytes > max_memory_bytes {
        return Err(format!(
            "{who}: memory limit of {} bytes is above the host's max_memory_bytes ({max_memory_bytes})",
            limits.memory_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::types::LimitsSpec;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "task-reminder".into(),
            version: "1.2.0".into(),
            kind: PluginKind::Handler,
            channels: vec!["tasks.due".into(), "tasks_v2-x".into()],
            limits: LimitsSpec::default(),
        }
    }

    fn err(i: &PluginInfo, world: PluginKind) -> String {
        check_info(i, world).err().unwrap_or_default()
    }

    #[test]
    fn accepts_a_good_plugin() {
        assert_eq!(check_info(&info(), PluginKind::Handler), Ok(()));
    }

    #[test]
    fn rejects_bad_info() {
        let mut i = info();
        i.name = String::new();
        assert!(err(&i, PluginKind::Handler).contains("empty name"));
        let mut i = info();
        i.name = "a b".into();
        assert!(err(&i, PluginKind::Handler).contains("invalid"));
        let i = info();
        assert!(err(&i, PluginKind::Mapper).contains("exports the mapper interface"));
        let mut i = info();
        i.channels.clear();
        assert!(err(&i, PluginKind::Handler).contains("no channels"));
        for bad in ["", "a/b", "sluice.>", "x*", "é", "a..b", ".a", "a\nb"] {
            let mut i = info();
            i.channels.push(bad.into());
            assert!(err(&i, PluginKind::Handler).contains("invalid"), "{bad:?}");
        }
        let mut i = info();
        i.channels.push("c".repeat(names::MAX_CHANNEL + 1));
        assert!(err(&i, PluginKind::Handler).contains("invalid"));
        let mut i = info();
        i.channels.push("tasks.due".into());
        assert!(err(&i, PluginKind::Handler).contains("twice"));
        let mut i = info();
        i.name = "a.b".into();
        assert!(err(&i, PluginKind::Handler).contains("has a dot"));
        let mut i = info();
        i.channels = (0..=names::MAX_CHANNELS_PER_PLUGIN)
            .map(|n| format!("c{n}"))
            .collect();
        assert!(err(&i, PluginKind::Handler).contains("at most 32"));
    }

    #[test]
    fn limits_are_ceilings() {
        let ceiling = Limits {
            fuel: 10,
            memory_bytes: 1 << 20,
            timeout_ms: 100,
        };
        let ask = LimitsSpec {
            fuel: Some(u64::MAX),
            memory_bytes: Some(512 << 10),
            timeout_ms: None,
        };
        let got = Limits::resolve(ceiling, ask);
        let want = Limits {
            fuel: 10,
            memory_bytes: 512 << 10,
            timeout_ms: 100,
        };
        assert_eq!(got, want);
        assert_eq!(got.capped(ask), vec!["fuel"]);
        let greedy = LimitsSpec {
            fuel: Some(u64::MAX),
            memory_bytes: Some(u64::MAX),
            timeout_ms: Some(u64::MAX),
        };
        assert_eq!(Limits::resolve(ceiling, greedy), ceiling);
        assert_eq!(ceiling.capped(greedy).len(), 3);
        assert_eq!(Limits::resolve(ceiling, LimitsSpec::default()), ceiling);
    }

    #[test]
    fn resolved_limits_are_checked() {
        let got = Limits {
            fuel: 20,
            memory_bytes: 3 << 20,
            timeout_ms: 100,
        };
        assert_eq!(check_limits("plugin p", got, 4 << 20), Ok(()));
        assert!(
            check_limits("plugin p", got, 2 << 20).is_err_and(|e| e.contains("max_memory_bytes"))
        );
        let zero = Limits { fuel: 0, ..got };
        assert!(check_limits("plugin p", zero, 4 << 20).is_err_and(|e| e.contains("fuel")));
        let zero = Limits {
            memory_bytes: 0,
            ..got
        };
        assert!(check_limits("plugin p", zero, 4 << 20).is_err());
        let zero = Limits {
            timeout_ms: 0,
            ..got
        };
        assert!(check_limits("plugin p", zero, 4 << 20).is_err());
    }
}
