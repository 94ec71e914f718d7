//! Recording the graphical console to a WebM (VP8) file with GStreamer: appsrc → videoconvert
//! → vp8enc → webmmux → filesink.
//!
//! The recorder maps the guest's framebuffer memfd itself and captures it on a thread of its
//! own at a steady 30 frames per second, so neither the copy nor the encoding touches the GTK
//! main loop. A frame that shows the same pixels as the one before is not pushed again (a
//! still console costs no encoding; WebM timestamps carry the gap), and a frame is dropped
//! rather than queued when the encoder falls behind. The file is written as `NAME.part`;
//! stopping sends end-of-stream, waits for the muxer to finish the file (duration, cues),
//! fsyncs it and renames it into place.

pub mod naming;
pub mod pacing;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gettextrs::gettext;
use gst::prelude::*;

use crate::widgets::display::socket::SharedFramebuffer;
use pacing::{FramePacer, Rows};

/// Frames per second of a recording.
pub const FRAME_RATE: u32 = 30;

/// How long stopping waits for the muxer to finish the file.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest's framebuffer as the console widget has it: its memfd (a duplicate the recorder
/// owns) and its x8r8g8b8 layout.
pub struct FrameSource {
    pub memfd: OwnedFd,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    Init(String),
    MissingElement {
        element: &'static str,
        package: &'static str,
    },
    Directory {
        path: PathBuf,
        error: io::Error,
    },
    File {
        path: PathBuf,
        error: io::Error,
    },
    Framebuffer(String),
    Pipeline(String),
    Unfinished {
        path: PathBuf,
    },
}

impl fmt::Display for RecordingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            RecordingError::Init(error) => {
                gettext("GStreamer could not start: {error}").replace("{error}", error)
            }
            RecordingError::MissingElement { element, package } => {
                gettext("the GStreamer element {element} is missing: install the package {package}")
                    .replace("{element}", element)
                    .replace("{package}", package)
            }
            RecordingError::Directory { path, error } => {
                gettext("cannot write recordings to {path}: {error}")
                    .replace("{path}", &path.display().to_string())
                    .replace("{error}", &error.to_string())
            }
            RecordingError::File { path, error } => gettext("cannot write {path}: {error}")
                .replace("{path}", &path.display().to_string())
                .replace("{error}", &error.to_string()),
            RecordingError::Framebuffer(error) => {
                gettext("cannot read the VM's screen: {error}").replace("{error}", error)
            }
            RecordingError::Pipeline(error) => {
                gettext("the video encoder failed: {error}").replace("{error}", error)
            }
            RecordingError::Unfinished { path } => {
                gettext("the video encoder did not finish {path} in time; the file may not play")
                    .replace("{path}", &path.display().to_string())
            }
        };
        f.write_str(&text)
    }
}

/// A finished recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub path: PathBuf,
    /// Frames given to the encoder; a still screen is one frame for all of its stillness.
    pub frames: u64,
    /// Frames left out because the encoder was behind.
    pub dropped: u64,
    pub duration: Duration,
}

/// The Debian package that has a GStreamer element, for the error that says it is missing.
fn package_of(element: &str) -> &'static str {
    match element {
        "vp8enc" | "webmmux" => "gstreamer1.0-plugins-good",
        "filesink" => "libgstreamer1.0-0",
        _ => "gstreamer1.0-plugins-base",
    }
}

fn element(name: &'static str) -> Result<gst::Element, RecordingError> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| RecordingError::MissingElement {
            element: name,
            package: package_of(name),
        })
}

/// The first error the pipeline posted, as text.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let message = bus.pop_filtered(&[gst::MessageType::Error])?;
    match message.view() {
        gst::MessageView::Error(err) => Some(err.error().to_string()),
        _ => None,
    }
}

/// A recording in progress. Stopping it, or dropping it, ends it cleanly: the thread finishes
/// the file and then calls the `on_end` given to [`Recording::start`].
pub struct Recording {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Recording {
    /// Starts recording `source` into `path` (which must not exist yet). Whatever can be found
    /// wrong at once (a missing plugin, a folder that cannot be written) is an error here;
    /// later failures and the saved file reach `on_end`, called once from the recording's
    /// thread.
    pub fn start(
        source: FrameSource,
        path: PathBuf,
        on_end: impl FnOnce(Result<Saved, RecordingError>) + Send + 'static,
    ) -> Result<Recording, RecordingError> {
        gst::init().map_err(|e| RecordingError::Init(e.to_string()))?;
        let rows = Rows {
            row_bytes: source.width as usize * 4,
            stride: source.stride as usize,
            height: source.height as usize,
        };
        if source.width == 0 || source.height == 0 || rows.span() > source.size {
            return Err(RecordingError::Framebuffer(format!(
                "{}x{} with stride {} does not fit in {} bytes",
                source.width, source.height, source.stride, source.size
            )));
        }
        let memory = SharedFramebuffer::map(&source.memfd, source.size)
            .map_err(|e| RecordingError::Framebuffer(e.to_string()))?;

        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "BGRx")
            .field("width", source.width as i32)
            .field("height", source.height as i32)
            .field("framerate", gst::Fraction::new(FRAME_RATE as i32, 1))
            .build();
        let appsrc = gst_app::AppSrc::builder()
            .caps(&caps)
            .format(gst::Format::Time)
            .max_bytes(4 * rows.packed_len() as u64)
            .build();
        let convert = element("videoconvert")?;
        let encoder = element("vp8enc")?;
        // Realtime: one pass, the fastest search, both cores; text on a console wants more
        // bits than vp8enc's default 256 kbit/s.
        encoder.set_property("deadline", 1i64);
        encoder.set_property("cpu-used", 16i32);
        encoder.set_property("threads", 2i32);
        encoder.set_property(
            "target-bitrate",
            (source.width * source.height * 2).clamp(500_000, 8_000_000) as i32,
        );
        encoder.set_property("keyframe-max-dist", (FRAME_RATE * 5) as i32);
        let muxer = element("webmmux")?;
        let sink = element("filesink")?;

        let partial = naming::partial_path(&path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|error| RecordingError::Directory {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        // Made here, so that an unwritable folder or a name already taken is told now.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|error| RecordingError::File {
                path: partial.clone(),
                error,
            })?;
        sink.set_property("location", partial.to_string_lossy().as_ref());

        let pipeline = gst::Pipeline::new();
        let elements = [
            appsrc.upcast_ref::<gst::Element>(),
            &convert,
            &encoder,
            &muxer,
            &sink,
        ];
        let built = pipeline
            .add_many(elements)
            .and_then(|()| gst::Element::link_many(elements));
        if let Err(err) = built {
            let _ = fs::remove_file(&partial);
            return Err(RecordingError::Pipeline(err.to_string()));
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            let error = bus_error(&pipeline).unwrap_or_else(|| "cannot start".into());
            let _ = pipeline.set_state(gst::State::Null);
            let _ = fs::remove_file(&partial);
            return Err(RecordingError::Pipeline(error));
        }

        let (stop, stopped) = mpsc::channel();
        let capture = Capture {
            pipeline,
            appsrc,
            memory,
            rows,
            pacer: FramePacer::new(FRAME_RATE),
            partial,
            path: path.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("hangar-recording".into())
            .spawn(move || on_end(capture.run(stopped)))
            .map_err(|e| RecordingError::Pipeline(e.to_string()))?;
        Ok(Recording {
            path,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the file goes once finished.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ends the recording without waiting for the file to be finished.
    pub fn stop(mut self) {
        self.stop.take();
    }

    /// Ends the recording and waits until `on_end` has run.
    pub fn finish(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Dropping the sender is the stop signal; the thread finishes the file by itself.
        self.stop.take();
    }
}

/// The recording's thread: the pipeline and its own mapping of the framebuffer.
struct Capture {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    memory: SharedFramebuffer,
    rows: Rows,
    pacer: FramePacer,
    partial: PathBuf,
    path: PathBuf,
}

impl Capture {
    fn run(self, stopped: mpsc::Receiver<()>) -> Result<Saved, RecordingError> {
        let result = self
            .capture(&stopped)
            .and_then(|(frames, dropped, duration)| {
                self.finish()?;
                Ok(Saved {
                    path: self.path.clone(),
                    frames,
                    dropped,
                    duration,
                })
            });
        let _ = self.pipeline.set_state(gst::State::Null);
        if result.is_err() {
            let _ = fs::remove_file(&self.partial);
        }
        result
    }

    /// Captures until told to stop (or the pipeline fails): frames, dropped frames, duration.
    fn capture(
        &self,
        stopped: &mpsc::Receiver<()>,
    ) -> Result<(u64, u64, Duration), RecordingError> {
        let started = Instant::now();
        let mut last: Option<u64> = None;
        let mut previous: Option<gst::Buffer> = None;
        let (mut frames, mut dropped) = (0, 0);
        loop {
            let next = last.map_or(0, |i| i + 1);
            let wait = self.pacer.due(next).saturating_sub(started.elapsed());
            let stopping = !matches!(
                stopped.recv_timeout(wait),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if let Some(error) = bus_error(&self.pipeline) {
                return Err(RecordingError::Pipeline(error));
            }
            let elapsed = started.elapsed();
            if stopping {
                // A last frame at the moment of stopping, so the video lasts as long as the
                // recording did even when the screen stood still at the end.
                let index = self.pacer.frame_at(elapsed).max(next);
                self.push(index)?;
                frames += 1;
                return Ok((frames, dropped, self.pacer.due(index + 1)));
            }
            let Some(index) = self.pacer.next_frame(elapsed, last) else {
                continue;
            };
            last = Some(index);
            let unchanged = previous.as_ref().is_some_and(|buffer| {
                buffer
                    .map_readable()
                    .is_ok_and(|map| self.rows.same_as(self.memory.bytes(), &map))
            });
            if unchanged {
                continue;
            }
            if self.appsrc.current_level_bytes() >= 2 * self.rows.packed_len() as u64 {
                dropped += 1;
                continue;
            }
            previous = Some(self.push(index)?);
            frames += 1;
        }
    }

    /// Copies the framebuffer into a buffer stamped as frame `index` and hands it over.
    fn push(&self, index: u64) -> Result<gst::Buffer, RecordingError> {
        let mut pixels = vec![0u8; self.rows.packed_len()];
        self.rows.copy_packed(self.memory.bytes(), &mut pixels);
        let mut buffer = gst::Buffer::from_mut_slice(pixels);
        {
            let buffer = buffer.get_mut().expect("a new buffer is writable");
            buffer.set_pts(gst::ClockTime::from_nseconds(self.pacer.pts_ns(index)));
            buffer.set_duration(gst::ClockTime::from_nseconds(self.pacer.duration_ns(index)));
        }
        self.appsrc.push_buffer(buffer.clone()).map_err(|flow| {
            RecordingError::Pipeline(
                bus_error(&self.pipeline).unwrap_or_else(|| format!("{flow:?}")),
            )
        })?;
        Ok(buffer)
    }

    /// End of stream, the muxer's last word, then the file made durable under its name.
    fn finish(&self) -> Result<(), RecordingError> {
        let _ = self.appsrc.end_of_stream();
        let bus = self
            .pipeline
            .bus()
            .ok_or_else(|| RecordingError::Pipeline("the pipeline has no bus".into()))?;
        let message = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(FINISH_TIMEOUT.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        match message.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => {}
            Some(gst::MessageView::Error(err)) => {
                return Err(RecordingError::Pipeline(err.error().to_string()))
            }
            _ => {
                return Err(RecordingError::Unfinished {
                    path: self.path.clone(),
                })
            }
        }
        // The sink closes the file when the pipeline stops.
        let _ = self.pipeline.set_state(gst::State::Null);
        let file_error = |error| RecordingError::File {
            path: self.partial.clone(),
            error,
        };
        File::open(&self.partial)
            .and_then(|f| f.sync_all())
            .map_err(file_error)?;
        fs::rename(&self.partial, &self.path).map_err(|error| RecordingError::File {
            path: self.path.clone(),
            error,
        })?;
        if let Some(dir) = self.path.parent() {
            // The rename itself made durable; a folder that refuses fsync loses nothing now.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_elements_name_their_debian_package() {
        assert_eq!(package_of("vp8enc"), "gstreamer1.0-plugins-good");
        assert_eq!(package_of("webmmux"), "gstreamer1.0-plugins-good");
        assert_eq!(package_of("videoconvert"), "gstreamer1.0-plugins-base");
        let text = RecordingError::MissingElement {
            element: "vp8enc",
            package: "gstreamer1.0-plugins-good",
        }
        .to_string();
        assert!(
            text.contains("vp8enc") && text.contains("gstreamer1.0-plugins-good"),
            "{text}"
        );
    }
}
