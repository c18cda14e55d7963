//! The echo example serves and echoes on both backends.

use peregrine_examples::echo;
use peregrine_reactor::{BackendChoice, Config};

#[test]
fn echo_server_answers_every_frame_in_order() {
    for backend in [BackendChoice::Mio, BackendChoice::Auto] {
        let config = Config {
            backend,
            ..Config::with_addr("127.0.0.1:0".parse().unwrap())
        };
        let handle = echo::spawn(config).unwrap();
        let (frames, _) = echo::check(handle.local_addr(), 4, 200).unwrap();
        assert_eq!(frames, 800);
        assert_eq!(handle.stats().frames_in, 800);
        handle.shutdown().unwrap();
    }
}
