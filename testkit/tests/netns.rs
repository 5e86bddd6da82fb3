//! The namespace guard itself, against real namespaces: code runs inside, failures surface,
//! and nothing is left behind — also when a test panics.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use trellis_testkit::netns::{self, Netns};

/// An address that exists only inside `ns` (on its loopback).
fn private_address(ns: &Netns) -> SocketAddr {
    ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]).unwrap();
    "10.99.0.1:0".parse().unwrap()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
#[ignore = "root: creates network namespaces"]
fn code_run_inside_is_in_the_namespace_and_the_caller_is_not() {
    let ns = Netns::unique("kit-inside").unwrap();
    let addr = private_address(&ns);
    assert!(UdpSocket::bind(addr).is_err(), "the test's own thread is outside");
    assert!(ns.run(|| UdpSocket::bind(addr)).is_ok(), "run");
    assert!(ns.enter(|| UdpSocket::bind(addr)).unwrap().is_ok(), "enter");
    assert!(ns.block_on(|| async { UdpSocket::bind(addr) }).is_ok(), "block_on");
    assert!(ns.udp_socket(addr).is_ok(), "udp_socket");
    for value in ["0", "1"] {
        ns.sysctl("net.ipv4.ip_forward", value).unwrap();
        assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").unwrap(), value);
        assert_eq!(ns.exec("cat", &["/proc/sys/net/ipv4/ip_forward"]).unwrap().trim(), value);
    }
}

#[test]
#[ignore = "root: creates network namespaces"]
fn a_panic_inside_keeps_its_message_for_tests_and_is_an_error_for_the_test_bed() {
    let ns = Netns::unique("kit-panic").unwrap();
    let payload = catch_unwind(AssertUnwindSafe(|| ns.run(|| panic!("assertion inside: {}", 42)))).unwrap_err();
    assert_eq!(panic_message(payload.as_ref()), "assertion inside: 42");
    let payload = catch_unwind(AssertUnwindSafe(|| ns.block_on(|| async { panic!("async assertion") }))).unwrap_err();
    assert_eq!(panic_message(payload.as_ref()), "async assertion");
    let error = ns.enter(|| panic!("probe failed")).unwrap_err();
    assert!(error.to_string().contains(ns.name()), "{error}");
}

#[test]
#[ignore = "root: creates network namespaces"]
fn the_namespace_and_its_processes_are_gone_after_drop_also_when_the_test_panics() {
    let prefix = netns::unique_prefix("kit-drop");
    let mut sleeper = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns = Netns::create(&prefix).unwrap();
        let a = Netns::create(&format!("{prefix}-b")).unwrap();
        netns::veth(&ns, "left", &a, "right").unwrap();
        // A process that would keep the namespace alive.
        let child = sleeper.insert(ns.command("sleep").arg("600").spawn().unwrap());
        assert_eq!(netns::list_with_prefix(&prefix).len(), 2);
        assert!(ns.pids().contains(&(child.id() as i32)), "{:?}", ns.pids());
        panic!("test failed while namespaces were in use");
    }));
    assert!(result.is_err());
    assert_eq!(netns::list_with_prefix(&prefix), Vec::<String>::new(), "left behind");
    let status = sleeper.expect("sleeper started").wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the process inside was killed: {status}");
}

#[test]
#[ignore = "root: creates network namespaces"]
fn a_failing_command_reports_what_it_ran_and_what_it_said() {
    let ns = Netns::unique("kit-error").unwrap();
    let error = ns.ip(&["link", "del", "no-such-link"]).unwrap_err().to_string();
    assert!(error.contains("ip -n") && error.contains("no-such-link"), "{error}");
    assert!(error.to_lowercase().contains("cannot find device"), "{error}");
    assert!(Netns::create(ns.name()).is_err(), "a name in use is refused");
}
