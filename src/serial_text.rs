//! Serial output made fit for a terminal: guests often end lines with a bare `\n`, which a
//! terminal takes as "down one line" without returning to the left edge.

/// Tracks whether the last byte fed was `\r`, across chunks.
#[derive(Default)]
pub struct LineEndings {
    last_was_cr: bool,
}

impl LineEndings {
    /// The bytes with every bare `\n` turned into `\r\n`.
    pub fn convert(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
        for &byte in bytes {
            if byte == b'\n' && !self.last_was_cr {
                out.push(b'\r');
            }
            out.push(byte);
            self.last_was_cr = byte == b'\r';
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_newlines_get_a_carriage_return() {
        let mut endings = LineEndings::default();
        assert_eq!(endings.convert(b"a\nb\r\n"), b"a\r\nb\r\n");
        // A \r at the end of one chunk and \n at the start of the next stay one line end.
        assert_eq!(endings.convert(b"c\r"), b"c\r");
        assert_eq!(endings.convert(b"\nd"), b"\nd");
        assert_eq!(endings.convert(b"\n"), b"\r\n");
    }
}
