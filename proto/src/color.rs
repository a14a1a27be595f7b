//! The two colors of a blue-green deployment, parsed strictly: anything else is an error.
use crate::ProtoError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String", into = "&'static str")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The color that is not this one: the idle side when `self` is live.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Color {
    type Err = ProtoError;
    /// Exact lowercase names only: "Blue" or " blue" in etcd is a bug somewhere, not a color.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(ProtoError::InvalidColor(other.to_string())),
        }
    }
}

impl TryFrom<String> for Color {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Color> for &'static str {
    fn from(c: Color) -> Self {
        c.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_exact_names() {
        assert_eq!("blue".parse::<Color>().unwrap(), Color::Blue);
        assert_eq!("green".parse::<Color>().unwrap(), Color::Green);
        for bad in ["Blue", "GREEN", " blue", "red", ""] {
            let err = bad.parse::<Color>().unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn other_flips() {
        assert_eq!(Color::Blue.other(), Color::Green);
        assert_eq!(Color::Green.other().other(), Color::Green);
    }

    #[test]
    fn serde_round_trip_and_rejects_unknown() {
        assert_eq!(serde_json::to_string(&Color::Green).unwrap(), "\"green\"");
        assert_eq!(
            serde_json::from_str::<Color>("\"blue\"").unwrap(),
            Color::Blue
        );
        assert!(serde_json::from_str::<Color>("\"purple\"").is_err());
    }
}
