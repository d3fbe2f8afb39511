//! The values that cross the engine boundary: statement parameters ([`ToValue`]) and
//! column values ([`FromValue`]), in the four types every engine stores the same way.
//!
//! The model is SQLite's (integer, real, text, blob, null) because it is the smallest
//! common one: PostgreSQL columns are declared `BIGINT`, `DOUBLE PRECISION`, `TEXT` and
//! `BYTEA` by the neutral DDL, booleans are integers 0/1 in both, and a PostgreSQL
//! `boolean` result (`EXISTS (…)`) reads as an integer.

use crate::MetaError;

/// A value borrowed from a parameter or a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl ValueRef<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Int(_) => "integer",
            ValueRef::Real(_) => "real",
            ValueRef::Text(_) => "text",
            ValueRef::Blob(_) => "blob",
        }
    }
}

/// A statement parameter.
pub trait ToValue {
    fn to_value(&self) -> ValueRef<'_>;
}

impl ToValue for ValueRef<'_> {
    fn to_value(&self) -> ValueRef<'_> {
        *self
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> ValueRef<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> ValueRef<'_> {
        match self {
            Some(v) => v.to_value(),
            None => ValueRef::Null,
        }
    }
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> ValueRef<'_> {
                ValueRef::Int(i64::from(*self))
            }
        }
    )*};
}
int_to_value!(i64, i32, i16, i8, u32, u16, u8, bool);

impl ToValue for f64 {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Real(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Text(self)
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl ToValue for Vec<u8> {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

impl<const N: usize> ToValue for [u8; N] {
    fn to_value(&self) -> ValueRef<'_> {
        ValueRef::Blob(self)
    }
}

/// A column value converted to a Rust type. Conversions are checked: an integer out of the
/// target's range, or a value of another kind, is [`MetaError::Type`].
pub trait FromValue: Sized {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError>;
}

fn mismatch<T>(v: ValueRef<'_>, want: &str) -> Result<T, MetaError> {
    Err(MetaError::Type(format!(
        "expected {want}, found {}",
        v.kind()
    )))
}

impl FromValue for i64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
        match v {
            ValueRef::Int(i) => Ok(i),
            other => mismatch(other, "an integer"),
        }
    }
}

macro_rules! int_from_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| {
                    MetaError::Type(format!("{i} is out of range for {}", stringify!($t)))
                })
            }
        }
    )*};
}
int_from_value!(i32, i16, u64, u32, u16, u8, usize);

impl FromValue for bool {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
        Ok(i64::from_value(v)? != 0)
    }
}

impl FromValue for f64 {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
        match v {
            ValueRef::Real(f) => Ok(f),
            ValueRef::Int(i) => Ok(i as f64),
            other => mismatch(other, "a number"),
        }
    }
}

impl FromValue for String {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
        match v {
            ValueRef::Text(s) => Ok(s.to_owned()),
            other => mismatch(other, "text"),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
        match v {
            ValueRef::Blob(b) => Ok(b.to_vec()),
            // SQLite stores whatever it is given; a blob column may hold text.
            ValueRef::Text(s) => Ok(s.as_bytes().to_vec()),
            other => mismatch(other, "a blob"),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: ValueRef<'_>) -> Result<Self, MetaError> {
        match v {
            ValueRef::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result, as an engine sees it.
pub(crate) trait RowSource {
    fn value(&self, idx: usize) -> Result<ValueRef<'_>, MetaError>;
}

/// A row of a query's result ([`crate::Tx::query_row`] and friends).
pub struct Row<'r> {
    pub(crate) src: &'r dyn RowSource,
}

impl Row<'_> {
    /// Column `idx` (from 0) converted to `T`.
    pub fn get<T: FromValue>(&self, idx: usize) -> Result<T, MetaError> {
        let v = self.src.value(idx)?;
        T::from_value(v).map_err(|e| match e {
            MetaError::Type(m) => MetaError::Type(format!("column {idx}: {m}")),
            other => other,
        })
    }

    /// Column `idx` as it is.
    pub fn get_ref(&self, idx: usize) -> Result<ValueRef<'_>, MetaError> {
        self.src.value(idx)
    }
}

/// Statement parameters: `params![a, b, c]` is `&[&a, &b, &c]` as `&[&dyn ToValue]`.
#[macro_export]
macro_rules! params {
    () => {
        &[] as &[&dyn $crate::ToValue]
    };
    ($($p:expr),+ $(,)?) => {
        &[$(&$p as &dyn $crate::ToValue),+] as &[&dyn $crate::ToValue]
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_checked() {
        assert_eq!(u32::from_value(ValueRef::Int(7)).ok(), Some(7));
        assert!(u32::from_value(ValueRef::Int(-1)).is_err());
        assert!(i64::from_value(ValueRef::Text("1")).is_err());
        assert_eq!(
            Option::<String>::from_value(ValueRef::Null).ok(),
            Some(None)
        );
        assert!(bool::from_value(ValueRef::Int(1)).unwrap_or(false));
        assert_eq!(
            Vec::<u8>::from_value(ValueRef::Text("ab")).ok(),
            Some(b"ab".to_vec())
        );
    }
}
