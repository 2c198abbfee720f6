//! A program the verifier rejects must stop the loader with one sentence,
//! and the verifier's own explanation must be at hand for debugging. The
//! rejection here is real: the datapath object with `from_pod` patched to
//! begin with `exit`, which leaves the rest of the program unreachable, and
//! the verifier refuses unreachable instructions.

use fleetnet_agent::{
    DATAPATH_OBJECT,
    datapath::{Datapath, DatapathError},
};
use fleetnet_testing::testrun::TEST_SIZES;
use object::{Object, ObjectSection, ObjectSymbol};

/// `exit` (BPF_JMP | BPF_EXIT), the whole 8-byte instruction.
const EXIT: [u8; 8] = [0x95, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn a_verifier_rejection_names_the_program_and_keeps_the_log() {
    fleetnet_testing::require_root();
    let mut object = DATAPATH_OBJECT.to_vec();
    let at = function_offset(&object, "from_pod");
    object[at..at + 8].copy_from_slice(&EXIT);

    let error = match Datapath::load_object(&object, TEST_SIZES, None) {
        Ok(_) => panic!("the verifier accepted a program with unreachable instructions"),
        Err(error) => error,
    };
    assert_eq!(
        error.to_string(),
        "the kernel's verifier rejected eBPF program from_pod; \
         rerun with RUST_LOG=debug to see the verifier log"
    );
    let DatapathError::Verifier { program, log } = error else {
        panic!("not a verifier error: {error:?}");
    };
    assert_eq!(program, "from_pod");
    assert!(log.contains("unreachable insn 1"), "verifier log: {log}");
}

/// File offset of the first instruction of `function` in the ELF object.
fn function_offset(elf: &[u8], function: &str) -> usize {
    let file = object::File::parse(elf).expect("the datapath object is ELF");
    let symbol = file
        .symbols()
        .find(|symbol| symbol.name() == Ok(function))
        .unwrap_or_else(|| panic!("no symbol {function}"));
    let section = file
        .section_by_index(symbol.section_index().expect("function in a section"))
        .expect("section");
    let (start, _) = section.file_range().expect("section bytes in the file");
    (start + symbol.address() - section.address()) as usize
}
