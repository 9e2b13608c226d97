//! The one libnice call webrtcbin does not expose on GStreamer 1.22.

use gst::glib;
use gst::glib::translate::ToGlibPtr;
use gst::prelude::*;
use std::ffi::{CString, c_char, c_int, c_void};

// NiceAddress is a union of sockaddr, sockaddr_in and sockaddr_in6 (28 bytes); keep room.
#[repr(C, align(8))]
struct NiceAddress([u8; 64]);

unsafe extern "C" {
    fn nice_address_init(addr: *mut NiceAddress);
    fn nice_address_set_from_string(addr: *mut NiceAddress, s: *const c_char) -> c_int;
    fn nice_agent_add_local_address(agent: *mut c_void, addr: *mut NiceAddress) -> c_int;
}

/// Adds `ip` (e.g. `127.0.0.1`) to the local addresses the ICE agent of `webrtcbin` gathers
/// host candidates on. libnice skips loopback interfaces by default, so a loopback-only network
/// (a test namespace, one machine) needs this. Call it before negotiation starts.
pub fn add_local_address(webrtcbin: &gst::Element, ip: &str) -> Result<(), glib::BoolError> {
    let ice = webrtcbin.property::<glib::Object>("ice-agent");
    if ice.find_property("agent").is_none() {
        return Err(glib::bool_error!("webrtcbin's ICE agent is not libnice"));
    }
    let agent = ice.property::<glib::Object>("agent");
    if agent.type_().name() != "NiceAgent" {
        return Err(glib::bool_error!(
            "unexpected ICE agent {}",
            agent.type_().name()
        ));
    }
    let ip = CString::new(ip).map_err(|_| glib::bool_error!("address contains NUL"))?;
    let mut addr = NiceAddress([0; 64]);
    // SAFETY: `agent` is a live NiceAgent (type checked above) kept alive by `agent` for the
    // duration of the call; `addr` is a zeroed buffer larger than NiceAddress, initialised by
    // libnice before use; `ip` is a NUL-terminated string.
    let added = unsafe {
        nice_address_init(&mut addr);
        if nice_address_set_from_string(&mut addr, ip.as_ptr()) == 0 {
            return Err(glib::bool_error!("not an IP address: {:?}", ip));
        }
        let ptr: *mut glib::gobject_ffi::GObject = agent.to_glib_none().0;
        nice_agent_add_local_address(ptr as *mut c_void, &mut addr)
    };
    if added == 0 {
        return Err(glib::bool_error!("libnice refused the local address"));
    }
    Ok(())
}
