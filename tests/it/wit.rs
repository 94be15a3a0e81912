//! The SDKs carry their own copy of the WIT contract (so they build outside
//! this repository); these must be byte-identical to the top-level `wit/`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::repo_root;

/// `*.wit` file name -> contents, in `dir`.
fn wit_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wit"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn the_sdks_copies_of_the_wit_match_the_contract() {
    let root = repo_root();
    let contract = wit_files(&root.join("wit"));
    assert!(!contract.is_empty());
    for copy in ["sdk/wit", "sdk/python/sluice_sdk/wit"] {
        let files = wit_files(&root.join(copy));
        assert!(
            files == contract,
            "{copy}/ differs from wit/ (files {:?} vs {:?}): run scripts/sync-wit",
            files.keys().collect::<Vec<_>>(),
            contract.keys().collect::<Vec<_>>()
        );
    }
}
