//! beta: builds on alpha.

pub fn doubled_answer() -> u32 {
    alpha::answer() * 2
}

#[cfg(test)]
mod tests {
    #[test]
    fn doubles() {
        assert_eq!(super::doubled_answer(), 84);
    }
}
