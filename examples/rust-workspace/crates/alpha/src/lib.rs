//! alpha: uses the proc-macro and the constant build.rs generates.

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

pub fn answer() -> u32 {
    answer_macro::answer!()
}

pub fn greeting() -> &'static str {
    answer_macro::shout!(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_is_42() {
        assert_eq!(answer(), 42);
    }

    #[test]
    fn build_script_ran() {
        assert_eq!(GENERATED, "written by build.rs");
    }

    #[test]
    #[ignore = "ignored on purpose"]
    fn ignored_one() {
        panic!("an ignored test never runs");
    }
}
