//! OIDs of built-in functions clients call through the FunctionCall message.
//!
//! The FunctionCall message names a function only by OID. Built-in functions
//! have OIDs fixed in Postgres' catalog sources (`pg_proc.dat`), the same in
//! every cluster of a major version, so names in
//! `function_call_allow` resolve here at load time without a database
//! connection. A test checks this table against a live server's `pg_proc`.
//! Other functions are allowed by numeric OID.

/// (name, OIDs of all its overloads).
pub const BUILTIN_FUNCTION_OIDS: &[(&str, &[u32])] = &[
    // libpq's large-object interface (lo_* in fe-lobj.c) uses these.
    ("lo_open", &[952]),
    ("lo_close", &[953]),
    ("loread", &[954]),
    ("lowrite", &[955]),
    ("lo_lseek", &[956]),
    ("lo_lseek64", &[3170]),
    ("lo_creat", &[957]),
    ("lo_create", &[715]),
    ("lo_tell", &[958]),
    ("lo_tell64", &[3171]),
    ("lo_unlink", &[964]),
    ("lo_truncate", &[1004]),
    ("lo_truncate64", &[3172]),
    ("lo_from_bytea", &[3457]),
    ("lo_get", &[3458, 3459]),
    ("lo_put", &[3460]),
    ("lo_import", &[764, 767]),
    ("lo_export", &[765]),
    ("abs", &[1394, 1395, 1396, 1397, 1398, 1705]),
];

/// Resolve one `function_call_allow` entry: a built-in name or a numeric OID.
pub fn resolve(entry: &str) -> Option<Vec<u32>> {
    if let Ok(oid) = entry.parse::<u32>() {
        return Some(vec![oid]);
    }
    let name = entry
        .strip_prefix("pg_catalog.")
        .unwrap_or(entry)
        .to_ascii_lowercase();
    BUILTIN_FUNCTION_OIDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, oids)| oids.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_oids_resolve() {
        assert_eq!(resolve("lo_open"), Some(vec![952]));
        assert_eq!(resolve("pg_catalog.LO_GET"), Some(vec![3458, 3459]));
        assert_eq!(resolve("16384"), Some(vec![16384]));
        assert_eq!(resolve("my_function"), None);
    }
}
