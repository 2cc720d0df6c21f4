// An integration test that reads a fixture file from its package directory (the working
// directory of a test binary, under cargo as under nextest).

#[test]
fn reads_the_fixture_file() {
    let text = std::fs::read_to_string("tests/data/input.txt").expect("tests/data/input.txt, relative to the package");
    assert_eq!(text.trim(), "84");
    assert_eq!(text.trim().parse::<u32>().unwrap(), beta::doubled_answer());
}

#[test]
fn greeting_comes_from_the_macro() {
    assert_eq!(alpha::greeting(), "HELLO");
}
