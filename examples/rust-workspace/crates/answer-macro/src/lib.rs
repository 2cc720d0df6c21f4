//! A proc-macro written with `proc_macro` alone (no syn): `answer!()` expands to `42u32`,
//! `shout!(word)` to the word's name in capitals as a string literal.

use proc_macro::{Literal, TokenStream, TokenTree};

#[proc_macro]
pub fn answer(_input: TokenStream) -> TokenStream {
    TokenTree::Literal(Literal::u32_suffixed(42)).into()
}

#[proc_macro]
pub fn shout(input: TokenStream) -> TokenStream {
    let word = input.to_string();
    TokenTree::Literal(Literal::string(&upper(&word))).into()
}

fn upper(word: &str) -> String {
    word.trim().to_uppercase()
}

#[cfg(test)]
mod tests {
    // The test binary of a proc-macro crate links the standard library dynamically.
    #[test]
    fn upper_trims_and_capitalises() {
        assert_eq!(super::upper(" hello "), "HELLO");
    }
}
