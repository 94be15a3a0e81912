//! What a plugin says about itself when the host loads it.

/// Whether a plugin is a handler or a mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Does the work for the messages of its channels.
    Handler,
    /// Turns a channel's wire messages into requests and back.
    Mapper,
}

/// The answer to the host's `describe()` call, built with a builder so new
/// limits can be added without breaking plugins.
///
/// ```
/// use sluice_sdk::Describe;
///
/// let describe = Describe::handler("task-reminder", "1.0.0")
///     .channel("task.reminder")
///     .timeout_ms(5_000);
/// assert_eq!(describe.channels(), ["task.reminder"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    name: String,
    version: String,
    kind: PluginKind,
    channels: Vec<String>,
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
}

impl Describe {
    /// A handler named `name` (unique among the loaded plugins) at `version`
    /// (recorded on every job it runs).
    pub fn handler(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self::new(name.into(), version.into(), PluginKind::Handler)
    }

    /// A mapper named `name` at `version`.
    pub fn mapper(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self::new(name.into(), version.into(), PluginKind::Mapper)
    }

    fn new(name: String, version: String, kind: PluginKind) -> Self {
        Self {
            name,
            version,
            kind,
            channels: Vec::new(),
            fuel: None,
            memory_bytes: None,
            timeout_ms: None,
        }
    }

    /// Adds a channel this plugin handles (or maps). Call it once per channel.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channels.push(channel.into());
        self
    }

    /// Asks for a fuel budget per call (roughly instructions executed), so a
    /// runaway loop is stopped. The host's configured limit is a ceiling: a
    /// plugin gets what it asks for up to it, and the ceiling when unset.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }

    /// Asks for a largest linear memory, in bytes, up to the host's
    /// ceiling (the ceiling when unset).
    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }

    /// Asks for a wall-clock budget per call, in milliseconds, up to the
    /// host's ceiling (the ceiling when unset).
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Handler or mapper, as chosen by the constructor.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// The channels added with [`channel`](Self::channel), in order.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The requested fuel per call, if any.
    pub fn fuel_limit(&self) -> Option<u64> {
        self.fuel
    }

    /// The requested memory limit in bytes, if any.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_bytes
    }

    /// The requested timeout in milliseconds, if any.
    pub fn timeout_limit(&self) -> Option<u64> {
        self.timeout_ms
    }
}
