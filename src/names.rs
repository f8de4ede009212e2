//! One spelling per name: [`named_enum!`] declares a fieldless enum whose
//! variants each carry the one string used for them in the database, in
//! metric labels, in error texts, in logs and on the command line.

use std::fmt;

/// A string that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// What kind of name was expected (`action kind`, `LiteLLM call`, …).
    pub what: &'static str,
    /// The string given.
    pub name: String,
    /// Every name that would have been accepted.
    pub known: Vec<&'static str>,
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {} {:?}; known: {}",
            self.what,
            self.name,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

/// Declares `enum $name` with one spelling per variant: `ALL`, `as_str`,
/// `Display`, `Into<&'static str>` and `FromStr` (whose error lists the
/// known spellings).
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The one spelling of this name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(v: $name) -> Self {
                v.as_str()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::names::UnknownName {
                        what: $what,
                        name: s.to_owned(),
                        known: Self::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        enum Colour ("colour") {
            /// Red.
            Red = "red",
            /// Light blue.
            LightBlue = "light_blue",
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for c in Colour::ALL {
            assert_eq!(c.as_str().parse::<Colour>(), Ok(*c));
            assert_eq!(c.to_string(), c.as_str());
        }
        let e = "blue".parse::<Colour>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown colour \"blue\"; known: red, light_blue"
        );
    }
}
