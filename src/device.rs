//! Compute devices named on the command line: `cpu`, `cuda` or `cuda:N`.

use candle_core::Device;

use crate::error::{Error, Result};

/// Parses a device name. `cuda` needs the `cuda` cargo feature and a GPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::Device(format!("{name:?}: expected cpu, cuda or cuda:N")))?,
        None => {
            return Err(Error::Device(format!(
                "{name:?}: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Device(format!(
            "{name}: this build of quarry has no CUDA support (build with `--features cuda`)"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_bad_ones_explained() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").unwrap().is_cpu());
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("expected"), "{e}");
        if !candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
