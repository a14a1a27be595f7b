//! Per-color log files: size-capped by copy-and-truncate (the app holds the file open in append
//! mode, so truncating in place is safe and needs no signal), and read back as "last N lines".
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub fn log_path(state_dir: &Path, color: proto::Color) -> PathBuf {
    state_dir.join("logs").join(format!("{color}.log"))
}

/// Rotates `path` to `path.1` once it exceeds `max_bytes`; keeps one old generation.
pub fn cap(path: &Path, max_bytes: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let old = path.with_extension("log.1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The last `n` lines of the log (including the rotated generation when the current one is short).
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut lines = last_lines(path, n)?;
    if lines.len() < n {
        let older = last_lines(&path.with_extension("log.1"), n - lines.len()).unwrap_or_default();
        lines.splice(0..0, older);
    }
    Ok(lines)
}

/// Reads at most the last 1 MiB: enough for any sensible `n`, bounded for huge files.
fn last_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(1024 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // partial first line
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blue.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..100 {
            writeln!(f, "line {i}").unwrap();
        }
        assert_eq!(tail(&path, 2).unwrap(), vec!["line 98", "line 99"]);
        assert!(cap(&path, 100).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        writeln!(f, "after").unwrap();
        // The app's append-mode handle writes at the new end, and tail stitches the generations.
        assert_eq!(tail(&path, 2).unwrap(), vec!["line 99", "after"]);
        assert!(!cap(&path, 100).unwrap());
    }
}
