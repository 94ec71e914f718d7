//! The console recorder on its own, without GTK: synthetic frames drawn into a real memfd (as
//! the worker's framebuffer is), recorded through the real GStreamer pipeline into a WebM file
//! that `gst-discoverer-1.0` must report with a duration and a VP8 stream, and that GStreamer
//! must decode back into frames showing what was drawn.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use gst::prelude::*;
use hangar::recording::{FrameSource, Recording, RecordingError, Saved};

const WIDTH: u32 = 320;
const HEIGHT: u32 = 200;
/// Padded rows, as a framebuffer may have.
const STRIDE: u32 = WIDTH * 4 + 64;
const SIZE: usize = (STRIDE * HEIGHT) as usize;

/// The guest side: a memfd and its writable mapping.
struct Framebuffer {
    fd: OwnedFd,
    pixels: *mut u8,
}

impl Framebuffer {
    fn new() -> Framebuffer {
        // SAFETY: an anonymous memory file with a static name.
        let raw = unsafe { libc::memfd_create(c"test-framebuffer".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0, "memfd_create failed");
        // SAFETY: raw is a fresh descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sizing the file we own.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), SIZE as i64) }, 0);
        // SAFETY: a shared read-write mapping of the whole file.
        let pixels = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(pixels, libc::MAP_FAILED);
        Framebuffer {
            fd,
            pixels: pixels.cast(),
        }
    }

    /// Fills the whole screen with (r, g, b); x8r8g8b8 is B, G, R, X in memory.
    fn fill(&self, (r, g, b): (u8, u8, u8)) {
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                let at = (y * STRIDE + x * 4) as usize;
                // SAFETY: inside the mapping: y < HEIGHT, x < WIDTH.
                unsafe {
                    let p = self.pixels.add(at);
                    *p = b;
                    *p.add(1) = g;
                    *p.add(2) = r;
                    *p.add(3) = 0;
                }
            }
        }
    }

    fn source(&self) -> FrameSource {
        FrameSource {
            memfd: self.fd.try_clone().unwrap(),
            width: WIDTH,
            height: HEIGHT,
            stride: STRIDE,
            size: SIZE,
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hangar-recording-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// What gst-discoverer-1.0 says of a file: its duration in seconds and its video codec line.
fn discover(path: &Path) -> (f64, String) {
    let out = Command::new("gst-discoverer-1.0")
        .arg(path)
        .output()
        .expect("gst-discoverer-1.0 is missing: install gstreamer1.0-plugins-base-apps (scripts/install-deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "gst-discoverer-1.0 failed:\n{text}");
    let duration = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Duration: "))
        .unwrap_or_else(|| panic!("no duration in:\n{text}"));
    let seconds = duration
        .split(':')
        .fold(0.0, |acc, part| acc * 60.0 + part.parse::<f64>().unwrap());
    let video = text
        .lines()
        .find(|l| l.trim().starts_with("video #"))
        .unwrap_or_else(|| panic!("no video stream in:\n{text}"))
        .trim()
        .to_string();
    (seconds, video)
}

/// Decodes the file with GStreamer: the frames, each as its centre pixel (r, g, b).
fn decode(path: &Path) -> Vec<(u8, u8, u8)> {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! matroskademux ! vp8dec ! videoconvert ! \
         video/x-raw,format=RGB ! appsink name=sink sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let caps = sample.caps().unwrap().structure(0).unwrap().to_owned();
        let (w, h) = (
            caps.get::<i32>("width").unwrap() as usize,
            caps.get::<i32>("height").unwrap() as usize,
        );
        assert_eq!((w, h), (WIDTH as usize, HEIGHT as usize));
        let buffer = sample.buffer().unwrap().map_readable().unwrap();
        let stride = buffer.len() / h;
        let at = h / 2 * stride + w / 2 * 3;
        frames.push((buffer[at], buffer[at + 1], buffer[at + 2]));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    frames
}

fn near(a: (u8, u8, u8), b: (u8, u8, u8)) -> bool {
    let d = |x: u8, y: u8| (x as i32 - y as i32).abs() <= 24;
    d(a.0, b.0) && d(a.1, b.1) && d(a.2, b.2)
}

#[test]
fn a_recording_is_a_webm_that_plays_back_what_was_drawn() {
    let dir = scratch("plays");
    let path = dir.join("vm-now.webm");
    let fb = Framebuffer::new();
    let red = (230, 20, 20);
    let blue = (20, 20, 230);
    fb.fill(red);
    let (done, ended) = mpsc::channel();
    let recording = Recording::start(fb.source(), path.clone(), move |result| {
        done.send(result).unwrap();
    })
    .unwrap();
    assert_eq!(recording.path(), path);
    assert!(
        dir.join("vm-now.webm.part").is_file(),
        "the file is written under a partial name"
    );
    std::thread::sleep(Duration::from_millis(1000));
    fb.fill(blue);
    std::thread::sleep(Duration::from_millis(1000));
    recording.finish();
    let saved: Saved = ended.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(saved.path, path);
    assert!(path.is_file(), "the finished file has its name");
    assert!(!dir.join("vm-now.webm.part").exists());
    // Two pictures and the closing frame: a still screen is not encoded again and again.
    assert!(
        (2..=6).contains(&saved.frames),
        "{} frames given to the encoder",
        saved.frames
    );
    assert!(
        saved.duration >= Duration::from_millis(1900),
        "{:?}",
        saved.duration
    );

    let (seconds, video) = discover(&path);
    assert!(
        (1.8..3.0).contains(&seconds),
        "gst-discoverer-1.0 says {seconds} s"
    );
    assert!(video.contains("VP8"), "{video}");

    let frames = decode(&path);
    assert_eq!(frames.len() as u64, saved.frames, "{frames:?}");
    assert!(near(frames[0], red), "first frame {:?}", frames[0]);
    assert!(
        near(*frames.last().unwrap(), blue),
        "last frame {:?}",
        frames.last()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_moving_picture_is_recorded_at_the_steady_rate() {
    let dir = scratch("moving");
    let path = dir.join("moving.webm");
    let fb = Framebuffer::new();
    let (done, ended) = mpsc::channel();
    let recording = Recording::start(fb.source(), path.clone(), move |result| {
        done.send(result).unwrap();
    })
    .unwrap();
    // A new picture about every 10 ms for 1.5 s: faster than 30 fps, so every slot changes.
    let started = std::time::Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_millis(1500) {
        fb.fill(((i * 7) as u8, 128, 255 - i as u8));
        std::thread::sleep(Duration::from_millis(10));
        i += 1;
    }
    // Dropping the recording ends it as cleanly as stopping it.
    drop(recording);
    let saved = ended
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let frames = decode(&path);
    assert_eq!(frames.len() as u64, saved.frames);
    // One frame per 1/30 s slot, the closing frame included; a loaded machine may drop some
    // while the encoder lags, or sleep through a slot.
    let slots = saved.duration.as_secs_f64() * 30.0;
    assert!(
        (saved.frames + saved.dropped) as f64 >= slots * 0.8 && saved.frames as f64 <= slots + 1.0,
        "{} frames, {} dropped in {:?}",
        saved.frames,
        saved.dropped,
        saved.duration
    );
    assert!(
        (1.5..2.5).contains(&saved.duration.as_secs_f64()),
        "{:?}",
        saved.duration
    );
    let (seconds, video) = discover(&path);
    assert!(
        (seconds - saved.duration.as_secs_f64()).abs() < 0.1,
        "{seconds} s in the file, {:?} recorded",
        saved.duration
    );
    assert!(video.contains("VP8"), "{video}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_folder_that_cannot_be_written_is_an_error_naming_it() {
    let fb = Framebuffer::new();
    // /proc takes no new folders, not even from root.
    let path = Path::new("/proc/hangar-no-such-dir/x.webm").to_path_buf();
    let err = Recording::start(fb.source(), path, |_| panic!("never started"))
        .err()
        .expect("refused");
    assert!(matches!(err, RecordingError::Directory { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/proc/hangar-no-such-dir"),
        "{err}"
    );
}

#[test]
fn an_existing_file_is_not_overwritten() {
    let dir = scratch("taken");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("taken.webm");
    std::fs::write(dir.join("taken.webm.part"), b"someone's").unwrap();
    let fb = Framebuffer::new();
    let err = Recording::start(fb.source(), path, |_| panic!("never started"))
        .err()
        .expect("refused");
    assert!(matches!(err, RecordingError::File { .. }), "{err:?}");
    assert!(err.to_string().contains("taken.webm.part"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("taken.webm.part")).unwrap(),
        b"someone's"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_framebuffer_smaller_than_its_layout_is_refused() {
    let fb = Framebuffer::new();
    let mut source = fb.source();
    source.height = HEIGHT * 2;
    let err = Recording::start(source, scratch("small").join("x.webm"), |_| {
        panic!("never started")
    })
    .err()
    .expect("refused");
    assert!(matches!(err, RecordingError::Framebuffer(_)), "{err:?}");
}
