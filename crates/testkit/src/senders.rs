//! Contribution senders as presenters run them, for ingest tests: ffmpeg (MPEG-TS over SRT, FLV
//! over RTMP), a GStreamer pipeline, and an nginx-rtmp server to publish to. Each is a child
//! process killed when its handle drops.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A sender process; killed on drop.
pub struct Sender {
    child: Child,
    /// What it is, for messages.
    pub label: String,
}

impl Sender {
    fn spawn(label: String, command: &mut Command) -> Sender {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        Sender { child, label }
    }

    /// `None` while it runs; once it has exited, its status and what it printed.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok().flatten()?;
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        }
        Some(format!("{status}: {}", err.trim()))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an ffmpeg sender encodes.
#[derive(Clone, Copy, Debug)]
pub struct FfmpegOptions {
    /// B-frames (`-bf 2`) instead of none (`-tune zerolatency`).
    pub bframes: bool,
    /// An AAC sine tone next to the video.
    pub audio: bool,
    /// 320x180 at `-preset ultrafast`, for tests that run much else on the machine, instead
    /// of 640x360 at `veryfast`.
    pub light: bool,
}

impl Default for FfmpegOptions {
    /// No B-frames, a tone, 640x360.
    fn default() -> Self {
        FfmpegOptions {
            bframes: false,
            audio: true,
            light: false,
        }
    }
}

/// ffmpeg's arguments for a 640x360@30 (320x180 when light) test picture (and tone) in H.264
/// (and AAC), key frame every second, paced in real time, to `format` at `url`.
fn ffmpeg(options: FfmpegOptions, format: &str, url: &str) -> Command {
    let (size, preset) = match options.light {
        true => ("320x180", "ultrafast"),
        false => ("640x360", "veryfast"),
    };
    let mut command = Command::new("ffmpeg");
    command.args(["-nostdin", "-v", "error", "-re"]).args([
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s={size}:r=30"),
    ]);
    if options.audio {
        command.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    }
    command.args(["-c:v", "libx264", "-preset", preset, "-g", "30"]);
    command.args(["-pix_fmt", "yuv420p"]);
    if options.bframes {
        command.args(["-bf", "2"]);
    } else {
        command.args(["-tune", "zerolatency"]);
    }
    if options.audio {
        command.args(["-c:a", "aac"]);
    }
    command.args(["-f", format, url]);
    command
}

/// ffmpeg pushing MPEG-TS to an SRT listener on 127.0.0.1:`port` (the way OBS does).
pub fn ffmpeg_srt(port: u16, options: FfmpegOptions) -> Sender {
    let url = format!("srt://127.0.0.1:{port}?mode=caller");
    Sender::spawn(
        format!("ffmpeg MPEG-TS over SRT {options:?}"),
        &mut ffmpeg(options, "mpegts", &url),
    )
}

/// ffmpeg publishing FLV to an RTMP server at `url`.
pub fn ffmpeg_rtmp(url: &str, options: FfmpegOptions) -> Sender {
    Sender::spawn(
        format!("ffmpeg FLV over RTMP {options:?}"),
        &mut ffmpeg(options, "flv", url),
    )
}

/// A GStreamer sender to an SRT listener on 127.0.0.1:`port`: x264enc, `h264parse
/// config-interval=-1` (SPS/PPS before every key frame, so a receiver can join at any one),
/// AAC, `mpegtsmux alignment=7` (seven TS packets per SRT message; with the default, the
/// 1.22 srtsink loses the key frames on the wire and no receiver ever gets a picture).
pub fn gstreamer_srt(port: u16) -> Sender {
    let pipeline = format!(
        "videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 \
         ! x264enc tune=zerolatency speed-preset=veryfast key-int-max=30 \
         ! h264parse config-interval=-1 ! mpegtsmux name=m alignment=7 \
         ! srtsink uri=srt://127.0.0.1:{port}?mode=caller \
         audiotestsrc is-live=true ! audioconvert ! avenc_aac ! m."
    );
    Sender::spawn(
        "GStreamer h264parse + mpegtsmux over SRT".into(),
        Command::new("gst-launch-1.0")
            .args(["-q", "-e"])
            .args(pipeline.split_whitespace()),
    )
}

/// nginx with the RTMP module (Debian `libnginx-mod-rtmp`) as a child process: its config in
/// `dir`, one `live` application on 127.0.0.1:`port`, no daemon. Returns once it listens.
pub fn nginx_rtmp(dir: &Path, port: u16) -> Sender {
    let module = ["/usr/lib/nginx/modules", "/usr/share/nginx/modules"]
        .iter()
        .map(|d| Path::new(d).join("ngx_rtmp_module.so"))
        .find(|m| m.exists())
        .expect("the nginx RTMP module (scripts/setup installs libnginx-mod-rtmp)");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {};\ndaemon off;\nmaster_process off;\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx.log warn;\nevents {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n",
            module.display(),
            dir = dir.display(),
        ),
    )
    .expect("write nginx.conf");
    let server = Sender::spawn(
        "nginx-rtmp".into(),
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx.log")),
    );
    crate::eventually(Duration::from_secs(20), "nginx to listen for RTMP", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    server
}

/// A sender that, like a real encoder, dials again whenever its connection fails: a
/// `gst-launch-1.0 -q -e` pipeline started again 200 ms after each exit. Dropping it kills the
/// running one (SIGKILL, no goodbye on the wire) and stops the redialing.
pub struct Redialing {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Redialing {
    /// Runs the pipeline `description` (split at white space) until dropped.
    pub fn gst_launch(description: String) -> Redialing {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let mut child = crate::process::gst_launch(&description);
                while !flag.load(Ordering::SeqCst) && child.0.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                child.kill();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Redialing {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Redialing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
