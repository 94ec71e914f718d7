//! The display stream between a VM's worker and the console: newline-delimited JSON both ways.
//! The first message carries the framebuffer memfd (SCM_RIGHTS); damage and resync follow.
//! Pure parsing and encoding here; the socket reading is in `socket.rs`.

use serde::{Deserialize, Serialize};

/// The only framebuffer format the worker speaks: little-endian B, G, R, X bytes.
pub const FORMAT_X8R8G8B8: &str = "x8r8g8b8";
pub const STREAM_VERSION: u32 = 1;
/// Pointer coordinates are absolute, 0..=POINTER_MAX on both axes (the tablet's range).
pub const POINTER_MAX: u32 = 32767;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StreamError {
    #[error("display stream: malformed message {line:?}: {reason}")]
    Malformed { line: String, reason: String },
    #[error("display stream: version {0} is not supported (this Hangar speaks version 1); update Hangar and hangar-vmm together")]
    Version(u32),
    #[error("display stream: framebuffer format {0:?} is not supported (expected x8r8g8b8)")]
    Format(String),
    #[error("display stream: framebuffer {width}x{height} with stride {stride} does not fit in {size} bytes")]
    Geometry {
        width: u32,
        height: u32,
        stride: u32,
        size: u64,
    },
    #[error("display stream: the framebuffer message came without its memory fd")]
    MissingFd,
}

/// A rectangle of the framebuffer that changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The framebuffer's shape, from the first message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramebufferInfo {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub size: u64,
}

/// What the worker sends.
#[derive(Clone, Debug, PartialEq)]
pub enum DisplayEvent {
    Framebuffer(FramebufferInfo),
    Damage(Vec<DamageRect>),
    Resync,
    /// The worker could not understand a line we sent; the stream carries on.
    Error(String),
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum WireEvent {
    Framebuffer {
        version: u32,
        width: u32,
        height: u32,
        stride: u32,
        format: String,
        size: u64,
    },
    Damage {
        rects: Vec<DamageRect>,
    },
    Resync,
    Error {
        error: String,
    },
}

/// Parses one line from the worker, checking a framebuffer's geometry against its size.
pub fn parse_event(line: &str) -> Result<DisplayEvent, StreamError> {
    let wire: WireEvent = serde_json::from_str(line).map_err(|err| StreamError::Malformed {
        line: line.chars().take(200).collect(),
        reason: err.to_string(),
    })?;
    Ok(match wire {
        WireEvent::Framebuffer {
            version,
            width,
            height,
            stride,
            format,
            size,
        } => {
            if version != STREAM_VERSION {
                return Err(StreamError::Version(version));
            }
            if format != FORMAT_X8R8G8B8 {
                return Err(StreamError::Format(format));
            }
            let needed = u64::from(stride) * u64::from(height);
            if width == 0
                || height == 0
                || u64::from(stride) < u64::from(width) * 4
                || needed > size
            {
                return Err(StreamError::Geometry {
                    width,
                    height,
                    stride,
                    size,
                });
            }
            DisplayEvent::Framebuffer(FramebufferInfo {
                width,
                height,
                stride,
                size,
            })
        }
        WireEvent::Damage { rects } => DisplayEvent::Damage(rects),
        WireEvent::Resync => DisplayEvent::Resync,
        WireEvent::Error { error } => DisplayEvent::Error(error),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MouseButton {
    Left,
    Middle,
    Right,
}

/// What the console sends to the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum InputCommand {
    Key { code: u32, down: bool },
    Pointer { x: u32, y: u32 },
    Button { button: MouseButton, down: bool },
    Wheel { delta: i32 },
}

impl InputCommand {
    /// One line of the stream, newline included.
    pub fn to_line(self) -> String {
        let mut line = serde_json::to_string(&self).expect("input commands always serialize");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framebuffer_message_is_checked() {
        let ok = r#"{"event":"framebuffer","version":1,"width":640,"height":480,"stride":2560,"format":"x8r8g8b8","size":1228800}"#;
        assert_eq!(
            parse_event(ok).unwrap(),
            DisplayEvent::Framebuffer(FramebufferInfo {
                width: 640,
                height: 480,
                stride: 2560,
                size: 1228800
            })
        );
        let small = ok.replace("1228800", "1000");
        assert!(matches!(
            parse_event(&small),
            Err(StreamError::Geometry { .. })
        ));
        let narrow = ok.replace("2560", "100");
        assert!(matches!(
            parse_event(&narrow),
            Err(StreamError::Geometry { .. })
        ));
        assert_eq!(
            parse_event(&ok.replace("\"version\":1", "\"version\":2")),
            Err(StreamError::Version(2))
        );
        assert!(matches!(
            parse_event(&ok.replace("x8r8g8b8", "rgb565")),
            Err(StreamError::Format(_))
        ));
    }

    #[test]
    fn damage_and_resync_parse() {
        let line = r#"{"event":"damage","rects":[{"x":1,"y":2,"width":3,"height":4}]}"#;
        assert_eq!(
            parse_event(line).unwrap(),
            DisplayEvent::Damage(vec![DamageRect {
                x: 1,
                y: 2,
                width: 3,
                height: 4
            }])
        );
        assert_eq!(
            parse_event(r#"{"event":"resync"}"#).unwrap(),
            DisplayEvent::Resync
        );
        assert_eq!(
            parse_event(r#"{"event":"error","error":"bad display command"}"#).unwrap(),
            DisplayEvent::Error("bad display command".into())
        );
        assert!(matches!(
            parse_event("{\"event\":\"nope\"}"),
            Err(StreamError::Malformed { .. })
        ));
        assert!(matches!(
            parse_event("not json"),
            Err(StreamError::Malformed { .. })
        ));
    }

    #[test]
    fn commands_encode_as_the_worker_expects() {
        assert_eq!(
            InputCommand::Key {
                code: 30,
                down: true
            }
            .to_line(),
            "{\"cmd\":\"key\",\"code\":30,\"down\":true}\n"
        );
        assert_eq!(
            InputCommand::Pointer { x: 0, y: 32767 }.to_line(),
            "{\"cmd\":\"pointer\",\"x\":0,\"y\":32767}\n"
        );
        assert_eq!(
            InputCommand::Button {
                button: MouseButton::Right,
                down: false
            }
            .to_line(),
            "{\"cmd\":\"button\",\"button\":\"right\",\"down\":false}\n"
        );
        assert_eq!(
            InputCommand::Wheel { delta: -1 }.to_line(),
            "{\"cmd\":\"wheel\",\"delta\":-1}\n"
        );
    }
}
