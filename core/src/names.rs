//! Validation of the names that become parts of paths or snapshot metadata.
//!
//! Job ids name a directory under the store root and region names are stored in
//! manifests; both are restricted to a conservative character set so that no
//! input can escape the store root (`..`, `/`, NUL) or confuse a shell or log.

use crate::StoreError;

const MAX_JOB_ID: usize = 64;
const MAX_REGION_NAME: usize = 128;

fn plain(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a job id: 1–64 characters from `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn validate_job_id(job: &str) -> Result<(), StoreError> {
    if plain(job, MAX_JOB_ID) {
        Ok(())
    } else {
        Err(StoreError::InvalidJobId(job.to_owned()))
    }
}

/// Checks a region name: 1–128 characters from `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn validate_region_name(name: &str) -> Result<(), StoreError> {
    if plain(name, MAX_REGION_NAME) {
        Ok(())
    } else {
        Err(StoreError::InvalidRegionName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["job-42", "heat.1", "A_b-c.d", "x"] {
            assert!(validate_job_id(ok).is_ok(), "{ok}");
            assert!(validate_region_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_path_tricks() {
        let too_long = "a".repeat(65);
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", ".hidden", "a\0b", "sp ace", &too_long,
        ] {
            assert!(validate_job_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_region_name(&"r".repeat(129)).is_err());
        assert!(validate_region_name("grid/../../etc").is_err());
    }
}
