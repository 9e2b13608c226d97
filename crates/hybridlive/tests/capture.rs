//! Capture sources without capture hardware: a PulseAudio microphone served by a user-space
//! `pulseaudio` daemon the test starts (a tone played into the room stands in for the voice),
//! and a V4L2
//! camera that is not there (this machine has no /dev/video*, so only the error is testable).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hybridlive_testkit::{TempDir, eventually};

/// The tone the fake microphone plays: far from the test source's own 440 Hz tone.
const MIC_HZ: f64 = 1000.0;

/// A PulseAudio daemon of the test's own: no autospawn, no D-Bus, no system config; one
/// socket in `dir` and a null sink `room` whose monitor `room.monitor` is the microphone.
struct PulseDaemon {
    child: Child,
    server: String,
    dir: PathBuf,
}

impl PulseDaemon {
    fn start(dir: &Path) -> PulseDaemon {
        let runtime = dir.join("pulse");
        std::fs::create_dir_all(&runtime).unwrap();
        let socket = runtime.join("native");
        let child = Command::new("pulseaudio")
            .args(["--daemonize=no", "--exit-idle-time=-1", "-n"])
            .args([
                "--use-pid-file=no",
                "--disable-shm=yes",
                "--log-target=stderr",
            ])
            .arg("-L")
            .arg(format!(
                "module-native-protocol-unix socket={} auth-anonymous=1",
                socket.display()
            ))
            .args(["-L", "module-null-sink sink_name=room rate=48000"])
            .envs(Self::env_for(&runtime))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio (scripts/setup installs it)");
        let daemon = PulseDaemon {
            child,
            server: format!("unix:{}", socket.display()),
            dir: runtime,
        };
        eventually(Duration::from_secs(20), "pulseaudio to serve", || {
            Command::new("pactl")
                .args(["list", "short", "sources"])
                .envs(daemon.env())
                .output()
                .ok()
                .filter(|o| String::from_utf8_lossy(&o.stdout).contains("room.monitor"))
                .map(|_| ())
        });
        daemon
    }

    /// Someone speaking in the room: a steady [`MIC_HZ`] tone played into the `room` sink, whose
    /// monitor is the microphone. (module-sine-source would be simpler, but pulsesrc 1.22
    /// stalls on it after the first fragment; a played stream flows like a real capture.)
    fn play_tone(&self) -> Child {
        Command::new("gst-launch-1.0")
            .args(["-q", "audiotestsrc", "is-live=true", "volume=0.5"])
            .arg(format!("freq={MIC_HZ}"))
            .args(["!", "pulsesink", "device=room"])
            .envs(self.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gst-launch-1.0")
    }

    /// Keeps the daemon and its clients away from the user's home and runtime folders.
    fn env_for(runtime: &Path) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", runtime.to_path_buf()),
            ("XDG_RUNTIME_DIR", runtime.to_path_buf()),
            ("XDG_CONFIG_HOME", runtime.join("config")),
            ("PULSE_RUNTIME_PATH", runtime.to_path_buf()),
        ]
    }

    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let mut env = Self::env_for(&self.dir);
        env.push(("PULSE_SERVER", PathBuf::from(&self.server)));
        env
    }
}

impl Drop for PulseDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_pipeline(dir: &Path, source: &str) -> PathBuf {
    let file = dir.join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "{source}\n\
             [encoders.video]\ntype = \"h264\"\ninputs = [\"cam\"]\npreset = \"zerolatency\"\n\n\
             [encoders.audio]\ntype = \"aac\"\ninputs = [\"cam\"]\n\n\
             [outputs.recording]\ntype = \"record\"\ninputs = [\"video\", \"audio\"]\n\
             directory = \"rec\"\n"
        ),
    )
    .unwrap();
    file
}

/// The first channel of `file`'s audio as 48 kHz mono samples.
fn audio_samples(file: &Path) -> Vec<f64> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        .args(["-map", "0:a:0", "-af", "pan=mono|c0=c0"])
        .args(["-ar", "48000", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg cannot decode the audio of {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

#[test]
fn a_pulseaudio_microphone_is_recorded_with_its_tone() {
    let scratch = TempDir::new("pulse");
    let pulse = PulseDaemon::start(&scratch.0);
    let mut speaker = pulse.play_tone();
    let pipeline = write_pipeline(
        &scratch.0,
        "[sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 180\nmicrophone = \"room.monitor\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .arg("run")
        .arg(&pipeline)
        .args(["--http", "127.0.0.1:0", "--duration", "5"])
        .current_dir(&scratch.0)
        .envs(pulse.env())
        .stdout(Stdio::null())
        .output()
        .expect("hybridlive run");
    let _ = speaker.kill();
    let _ = speaker.wait();
    assert!(
        out.status.success(),
        "hybridlive run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recording = std::fs::read_dir(scratch.0.join("rec"))
        .expect("the recording folder")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "mp4"))
        .expect("a recording");

    let samples = audio_samples(&recording);
    // Skip the first half second (the source and the encoder starting).
    let steady = &samples[samples.len().min(24_000)..];
    assert!(
        steady.len() >= 48_000 * 3,
        "{:.2} s of audio recorded in a 5 s run",
        samples.len() as f64 / 48_000.0
    );
    let rms = (steady.iter().map(|s| s * s).sum::<f64>() / steady.len() as f64).sqrt();
    // The tone's frequency from the median time between rising zero crossings (placed
    // between samples): a stretch of silence the runner filled in for samples a loaded
    // machine did not deliver in time is no crossing, not a slower tone.
    let crossings: Vec<f64> = steady
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + w[0] / (w[0] - w[1]))
        .collect();
    let mut periods: Vec<f64> = crossings.windows(2).map(|c| c[1] - c[0]).collect();
    periods.sort_by(f64::total_cmp);
    let median = periods
        .get(periods.len() / 2)
        .copied()
        .unwrap_or(f64::INFINITY);
    let hz = 48_000.0 / median;
    eprintln!(
        "recorded {:.2} s of audio from PulseAudio: {hz:.1} Hz, RMS {rms:.3}",
        samples.len() as f64 / 48_000.0
    );
    assert!(
        rms > 0.05,
        "the microphone recorded near silence (RMS {rms:.4})"
    );
    assert!(
        (hz - MIC_HZ).abs() < MIC_HZ * 0.02,
        "the recording's tone is {hz:.1} Hz, the microphone plays {MIC_HZ} Hz"
    );
}

#[test]
fn a_missing_pulseaudio_server_is_a_clear_error() {
    let scratch = TempDir::new("no-pulse");
    let pipeline = write_pipeline(
        &scratch.0,
        "[sources.cam]\ntype = \"test\"\nwidth = 320\nheight = 180\nmicrophone = \"\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .arg("run")
        .arg(&pipeline)
        .args(["--http", "127.0.0.1:0", "--duration", "5"])
        .current_dir(&scratch.0)
        .env(
            "PULSE_SERVER",
            format!("unix:{}", scratch.0.join("none").display()),
        )
        .output()
        .expect("hybridlive run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without a sound server");
    assert!(
        stderr.contains("cam-audio") && stderr.contains("connect"),
        "the error names neither the microphone nor the failure: {stderr}"
    );
}

#[test]
fn a_missing_v4l2_camera_is_a_clear_error_naming_the_device() {
    let scratch = TempDir::new("v4l2");
    let device = "/dev/video-hybridlive-missing";
    let pipeline = write_pipeline(
        &scratch.0,
        &format!("[sources.cam]\ntype = \"v4l2\"\ndevice = \"{device}\"\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_hybridlive"))
        .arg("run")
        .arg(&pipeline)
        .args(["--http", "127.0.0.1:0", "--duration", "5"])
        .current_dir(&scratch.0)
        .output()
        .expect("hybridlive run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without a camera");
    assert!(
        stderr.contains(device) && stderr.contains("source `cam`"),
        "the error does not name the source and the device: {stderr}"
    );
    // Nothing was started, so nothing was recorded.
    assert!(
        !scratch.0.join("rec").exists()
            || std::fs::read_dir(scratch.0.join("rec"))
                .unwrap()
                .next()
                .is_none()
    );
}
