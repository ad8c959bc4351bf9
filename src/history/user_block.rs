//! User blocks: the users of a block of hours and their usage totals, as one value of
//! `usage_user_blocks` (see [`super::rollup`]), so that a report by user reads a few values and
//! merges them in one pass instead of reading a row per user and block.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format, 1 |
//! | varint | length of the user id in bytes |
//! | n | the user id, UTF-8 |
//! | varint | `count`, zigzag |
//! | varint | `quantity`, zigzag |
//! | varint | `credits`, zigzag |
//! | … | the next user, ids in ascending byte order, each once |
//!
//! Varints are LEB128 (7 bits a byte, low bits first); zigzag maps a signed number to an
//! unsigned one (0, -1, 1, -2 … to 0, 1, 2, 3 …). A block with no user is the format byte
//! alone.
//! Reading checks every length and varint and fails with [`StoreError::Damaged`] rather than
//! panic; sums are checked ([`Totals::add`]).

use super::rollup::Totals;
use super::StoreError;

/// The format byte a user block starts with.
const USERS_FORMAT: u8 = 1;

/// Writes a user block: users added in ascending id order, each once (consecutive additions for
/// the same user are summed).
pub(crate) struct UsersWriter {
    bytes: Vec<u8>,
    pending: Option<(String, Totals)>,
}

impl UsersWriter {
    /// An empty block.
    pub(crate) fn new() -> UsersWriter {
        UsersWriter {
            bytes: vec![USERS_FORMAT],
            pending: None,
        }
    }

    /// Adds `totals` to `user`, which is the last user added or comes after it.
    pub(crate) fn add(&mut self, user: &str, totals: &Totals) -> Result<(), StoreError> {
        if let Some((pending, sum)) = &mut self.pending {
            if pending == user {
                return sum.add(totals);
            }
            if pending.as_str() > user {
                return Err(StoreError::Damaged("user ids out of order"));
            }
            write_user(&mut self.bytes, pending, sum);
            pending.clear();
            pending.push_str(user);
            *sum = *totals;
            return Ok(());
        }
        self.pending = Some((user.to_owned(), *totals));
        Ok(())
    }

    /// The block's bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if let Some((user, totals)) = self.pending.take() {
            write_user(&mut self.bytes, &user, &totals);
        }
        self.bytes
    }
}

fn write_user(bytes: &mut Vec<u8>, user: &str, totals: &Totals) {
    write_varint(bytes, user.len() as u64);
    bytes.extend_from_slice(user.as_bytes());
    write_varint(bytes, zigzag(totals.count));
    write_varint(bytes, zigzag(totals.quantity));
    write_varint(bytes, zigzag(totals.credits));
}

/// Reads a user block: its users in ascending id order. An empty slice is an empty block.
pub(crate) struct UsersReader<'a> {
    bytes: &'a [u8],
}

impl<'a> UsersReader<'a> {
    /// The users of `block`.
    pub(crate) fn new(block: &'a [u8]) -> Result<UsersReader<'a>, StoreError> {
        match block.split_first() {
            None => Ok(UsersReader { bytes: &[] }),
            Some((&USERS_FORMAT, rest)) => Ok(UsersReader { bytes: rest }),
            Some(_) => Err(StoreError::Damaged("user block of an unknown format")),
        }
    }

    /// The next user and totals, or `None` at the end.
    pub(crate) fn next_user(&mut self) -> Result<Option<(&'a str, Totals)>, StoreError> {
        match self.next_raw()? {
            Some((user, totals)) => {
                let user = std::str::from_utf8(user)
                    .map_err(|_| StoreError::Damaged("user id in a user block"))?;
                Ok(Some((user, totals)))
            }
            None => Ok(None),
        }
    }

    /// The next user (its id's bytes, not checked to be UTF-8) and totals, or `None` at the end.
    pub(crate) fn next_raw(&mut self) -> Result<Option<(&'a [u8], Totals)>, StoreError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let damaged = || StoreError::Damaged("user block");
        let length = usize::try_from(self.varint()?).map_err(|_| damaged())?;
        let (user, rest) = self.bytes.split_at_checked(length).ok_or_else(damaged)?;
        self.bytes = rest;
        let totals = Totals {
            count: unzigzag(self.varint()?),
            quantity: unzigzag(self.varint()?),
            credits: unzigzag(self.varint()?),
        };
        Ok(Some((user, totals)))
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut value = 0u64;
        for (index, &byte) in self.bytes.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[index + 1..];
                return Ok(value);
            }
        }
        Err(StoreError::Damaged("user block varint"))
    }
}

/// The user block holding the sums of two.
pub(crate) fn merge_users(first: &[u8], second: &[u8]) -> Result<Vec<u8>, StoreError> {
    if second.len() <= 1 {
        return Ok(if first.is_empty() {
            UsersWriter::new().finish()
        } else {
            first.to_vec()
        });
    }
    if first.len() <= 1 {
        return Ok(second.to_vec());
    }
    let (mut a, mut b) = (UsersReader::new(first)?, UsersReader::new(second)?);
    let mut bytes = Vec::with_capacity(first.len() + second.len());
    bytes.push(USERS_FORMAT);
    let (mut next_a, mut next_b) = (a.next_user()?, b.next_user()?);
    loop {
        match (next_a, next_b) {
            (Some((user_a, totals_a)), Some((user_b, totals_b))) => match user_a.cmp(user_b) {
                std::cmp::Ordering::Less => {
                    write_user(&mut bytes, user_a, &totals_a);
                    next_a = a.next_user()?;
                }
                std::cmp::Ordering::Greater => {
                    write_user(&mut bytes, user_b, &totals_b);
                    next_b = b.next_user()?;
                }
                std::cmp::Ordering::Equal => {
                    let mut sum = totals_a;
                    sum.add(&totals_b)?;
                    write_user(&mut bytes, user_a, &sum);
                    next_a = a.next_user()?;
                    next_b = b.next_user()?;
                }
            },
            (Some((user, totals)), None) => {
                write_user(&mut bytes, user, &totals);
                next_a = a.next_user()?;
            }
            (None, Some((user, totals))) => {
                write_user(&mut bytes, user, &totals);
                next_b = b.next_user()?;
            }
            (None, None) => return Ok(bytes),
        }
    }
}

fn write_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(count: i64, quantity: i64, credits: i64) -> Totals {
        Totals {
            count,
            quantity,
            credits,
        }
    }

    fn block(users: &[(&str, Totals)]) -> Vec<u8> {
        let mut writer = UsersWriter::new();
        for (user, totals) in users {
            writer.add(user, totals).unwrap();
        }
        writer.finish()
    }

    fn read(block: &[u8]) -> Result<Vec<(String, Totals)>, StoreError> {
        let mut reader = UsersReader::new(block)?;
        let mut users = Vec::new();
        while let Some((user, totals)) = reader.next_user()? {
            users.push((user.to_owned(), totals));
        }
        Ok(users)
    }

    #[test]
    fn a_block_reads_back_what_was_written_with_repeated_users_summed() {
        let written = block(&[
            ("ada", totals(1, 2, 300)),
            ("ada", totals(1, 0, 5)),
            ("bob", totals(7, 0, i64::MAX)),
            ("émile", totals(0, 0, -4)),
        ]);
        assert_eq!(
            read(&written).unwrap(),
            [
                ("ada".to_owned(), totals(2, 2, 305)),
                ("bob".to_owned(), totals(7, 0, i64::MAX)),
                ("émile".to_owned(), totals(0, 0, -4)),
            ]
        );
        assert_eq!(block(&[]), [USERS_FORMAT]);
        assert_eq!(read(&[]).unwrap(), []);
        let mut writer = UsersWriter::new();
        writer.add("bob", &totals(1, 1, 1)).unwrap();
        assert!(matches!(
            writer.add("ada", &totals(1, 1, 1)),
            Err(StoreError::Damaged(_))
        ));
    }

    #[test]
    fn merging_sums_the_users_in_both_and_keeps_the_others_in_order() {
        let first = block(&[("ada", totals(1, 1, 10)), ("cy", totals(2, 0, 20))]);
        let second = block(&[("bob", totals(1, 0, 1)), ("cy", totals(1, 3, 2))]);
        let merged = merge_users(&first, &second).unwrap();
        assert_eq!(
            read(&merged).unwrap(),
            [
                ("ada".to_owned(), totals(1, 1, 10)),
                ("bob".to_owned(), totals(1, 0, 1)),
                ("cy".to_owned(), totals(3, 3, 22)),
            ]
        );
        assert_eq!(merge_users(&first, &block(&[])).unwrap(), first);
        assert_eq!(merge_users(&[], &second).unwrap(), second);
        let full = block(&[("ada", totals(1, 0, i64::MAX))]);
        assert!(matches!(
            merge_users(&full, &full),
            Err(StoreError::Overflow(_))
        ));
    }

    #[test]
    fn a_damaged_block_is_an_error_never_a_panic() {
        let good = block(&[("ada", totals(1, 2, 3)), ("bob", totals(4, 5, 6))]);
        for end in 0..good.len() {
            // Every truncation either reads a prefix of the users or fails.
            if let Ok(users) = read(&good[..end]) {
                assert!(users.len() < 2, "{end}");
            }
        }
        assert!(matches!(read(&[2, 0]), Err(StoreError::Damaged(_))));
        assert!(matches!(
            read(&[USERS_FORMAT, 200]),
            Err(StoreError::Damaged(_))
        ));
        let endless = [
            USERS_FORMAT,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        assert!(matches!(read(&endless), Err(StoreError::Damaged(_))));
        assert!(matches!(
            read(&[USERS_FORMAT, 2, 0xff, 0xfe, 0, 0, 0]),
            Err(StoreError::Damaged(_))
        ));
    }
}
