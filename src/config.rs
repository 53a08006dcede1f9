//! [`ReserveConfig`]: how big the reserve is, how much headroom `ensure` keeps, where the
//! file lives and how its blocks are obtained.

use crate::SizeSpec;

/// The default reserve size: 64 MiB.
pub const DEFAULT_SIZE_BYTES: u64 = 64 << 20;

/// The default file name inside the home directory.
pub const DEFAULT_FILE_NAME: &str = ".reserve";

/// How `ensure` obtains the reserve's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Strategy {
    /// `fallocate` first; write data only when the filesystem does not support it
    /// (`EOPNOTSUPP`, `ENOTSUP`, `ENOSYS`) or when it succeeded without allocating (ZFS).
    #[default]
    Auto,
    /// `fallocate` only: an unsupported filesystem is an error.
    Fallocate,
    /// Write the incompressible pattern only (never `fallocate`).
    Write,
}

impl Strategy {
    /// The name used on the command line: `auto`, `fallocate`, `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Fallocate => "fallocate",
            Strategy::Write => "write",
        }
    }
}

/// What a [`Reserve`](crate::Reserve) keeps: size, headroom, file name and strategy.
///
/// ```
/// use disk_reserve::{ReserveConfig, SizeSpec, Strategy};
/// let config = ReserveConfig::default()          // 64 MiB at `.reserve`, headroom = size
///     .size(SizeSpec::Bytes(256 << 20))
///     .headroom(SizeSpec::percent(1.0).unwrap())
///     .strategy(Strategy::Auto);
/// assert_eq!(config.file_name_str(), ".reserve");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveConfig {
    size: SizeSpec,
    headroom: Option<SizeSpec>,
    file_name: String,
    strategy: Strategy,
}

impl Default for ReserveConfig {
    fn default() -> Self {
        ReserveConfig {
            size: SizeSpec::Bytes(DEFAULT_SIZE_BYTES),
            headroom: None,
            file_name: DEFAULT_FILE_NAME.to_owned(),
            strategy: Strategy::Auto,
        }
    }
}

impl ReserveConfig {
    /// A configuration of `size` bytes with every other setting at its default.
    pub fn with_size_bytes(size: u64) -> Self {
        ReserveConfig::default().size(SizeSpec::Bytes(size))
    }

    /// Sets the reserve size.
    pub fn size(mut self, size: SizeSpec) -> Self {
        self.size = size;
        self
    }

    /// Sets the headroom: `ensure` never takes free space below it. Defaults to the size.
    pub fn headroom(mut self, headroom: SizeSpec) -> Self {
        self.headroom = Some(headroom);
        self
    }

    /// Sets the file name inside the home directory (a single path component).
    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = name.into();
        self
    }

    /// Sets the allocation strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The configured size.
    pub fn size_spec(&self) -> SizeSpec {
        self.size
    }

    /// The configured headroom (the size when none was set).
    pub fn headroom_spec(&self) -> SizeSpec {
        self.headroom.unwrap_or(self.size)
    }

    /// The headroom as it was set: `None` when it follows the size.
    pub fn headroom_setting(&self) -> Option<SizeSpec> {
        self.headroom
    }

    /// Makes the headroom follow the size again (the default).
    pub fn headroom_default(mut self) -> Self {
        self.headroom = None;
        self
    }

    /// The file name inside the home directory.
    pub fn file_name_str(&self) -> &str {
        &self.file_name
    }

    /// The allocation strategy.
    pub fn strategy_kind(&self) -> Strategy {
        self.strategy
    }

    /// Whether resolving size or headroom needs the filesystem's total size.
    pub(crate) fn needs_total(&self) -> bool {
        self.size.needs_total() || self.headroom_spec().needs_total()
    }
}
