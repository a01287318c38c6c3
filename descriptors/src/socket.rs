//! A socket option shared by every binary that binds its outgoing
//! connections to a source address (edge-lb's `source_addresses`, the load
//! generator's players).

use std::io;
use std::os::fd::AsRawFd;

/// Sets `IP_BIND_ADDRESS_NO_PORT` on `socket`: a later `bind` to an address
/// with port 0 leaves the port for `connect` to choose per four-tuple,
/// instead of reserving one of the ephemeral ports for the socket's life
/// (which would cap a source address at ~28 000 connections in all, not
/// per destination). The option is an `IPPROTO_IP` one, and Linux honours
/// it on IPv6 sockets too.
pub fn leave_port_to_connect(socket: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd, a pointer to a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
