use super::*;

#[test]
fn signals_exit_as_shells_report_them() {
    assert_eq!(Signal::Interrupt.exit_code(), 130);
    assert_eq!(Signal::Terminate.exit_code(), 143);
    for signal in [Signal::Interrupt, Signal::Terminate] {
        assert_eq!(Signal::from_u8(signal.to_u8()), Some(signal));
    }
    assert_eq!(Signal::from_u8(0), None);
}

#[test]
fn phases_round_trip_through_their_index() {
    for (index, phase) in Phase::ALL.iter().enumerate() {
        assert_eq!(*phase as usize, index);
    }
    let mut names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Phase::ALL.len(), "phase names are distinct");
}

#[test]
fn the_error_names_the_signal_and_the_phase() {
    let error = Interrupted {
        signal: Signal::Terminate,
        phase: Phase::PostVm,
    };
    assert_eq!(
        error.to_string(),
        "interrupted by SIGTERM during the postVM phase: the build was stopped, everything it \
         started was killed and its temporary files were removed"
    );
}

#[test]
fn work_without_a_signal_returns_its_result() {
    let result = run_interruptible(|| 6 * 7).expect("no signal");
    assert_eq!(result, 42);
}

#[test]
fn host_tools_run_in_their_own_process_group() {
    let output =
        run_output(std::process::Command::new("sh").args(["-c", "ps -o pgid= -p $$; echo $$"]))
            .expect("sh runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.split_whitespace();
    let (pgid, pid) = (lines.next(), lines.next());
    assert!(pgid.is_some() && pgid == pid, "{text}");
}
