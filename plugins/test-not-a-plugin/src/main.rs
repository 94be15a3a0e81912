//! Test component (not an example): a plain program, i.e. a valid component
//! of the wrong world (`wasi:cli/command`, exporting `wasi:cli/run`). The
//! host must refuse to load it as a plugin.

fn main() {
    println!("hello from test-not-a-plugin");
}
