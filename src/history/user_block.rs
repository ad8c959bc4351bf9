//! User blocks: the users (ledger accounts) of a block of hours and their usage totals, as one
//! value of `usage_user_blocks` (see [`super::rollup`]), so that a report by user reads a few
//! values and merges them in one pass instead of reading a row per user and block.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format, 1 |
//! | varint | the account id, less the previous one's (the first: the id itself) |
//! | varint | `count`, zigzag |
//! | varint | `quantity`, zigzag |
//! | varint | `credits`, zigzag |
//! | … | the next account, ids in ascending order, each once |
//!
//! Varints are LEB128 (7 bits a byte, low bits first); zigzag maps a signed number to an
//! unsigned one (0, -1, 1, -2 … to 0, 1, 2, 3 …). A block with no account is the format byte
//! alone. Account ids are those of the ledger's `accounts` table (positive); a report turns them
//! into user ids. Reading checks every varint and fails with [`StoreError::Damaged`] rather than
//! panic; sums are checked ([`Totals::add`]).

use super::rollup::Totals;
use super::StoreError;

/// The format byte a user block starts with.
const USERS_FORMAT: u8 = 1;

/// Writes a user block: accounts added in ascending order (consecutive additions for the same
/// account are summed).
pub(crate) struct UsersWriter {
    bytes: Vec<u8>,
    last: i64,
    pending: Option<(i64, Totals)>,
}

impl UsersWriter {
    /// An empty block.
    pub(crate) fn new() -> UsersWriter {
        UsersWriter {
            bytes: vec![USERS_FORMAT],
            last: 0,
            pending: None,
        }
    }

    /// Adds `totals` to `account`, which is the last account added or comes after it.
    pub(crate) fn add(&mut self, account: i64, totals: &Totals) -> Result<(), StoreError> {
        match &mut self.pending {
            Some((pending, sum)) if *pending == account => sum.add(totals),
            Some((pending, _)) if *pending > account => {
                Err(StoreError::Damaged("accounts out of order"))
            }
            _ if account <= 0 => Err(StoreError::Damaged("an account id that is not positive")),
            pending => {
                if let Some((previous, sum)) = pending.replace((account, *totals)) {
                    write_user(&mut self.bytes, previous - self.last, &sum);
                    self.last = previous;
                }
                Ok(())
            }
        }
    }

    /// The block's bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if let Some((account, totals)) = self.pending.take() {
            write_user(&mut self.bytes, account - self.last, &totals);
        }
        self.bytes
    }
}

/// Appends one account: `delta` from the previous one (positive), then its totals.
fn write_user(bytes: &mut Vec<u8>, delta: i64, totals: &Totals) {
    write_varint(bytes, delta as u64);
    write_varint(bytes, zigzag(totals.count));
    write_varint(bytes, zigzag(totals.quantity));
    write_varint(bytes, zigzag(totals.credits));
}

/// Reads a user block: its accounts in ascending order. An empty slice is an empty block.
pub(crate) struct UsersReader<'a> {
    bytes: &'a [u8],
    last: i64,
}

impl<'a> UsersReader<'a> {
    /// The accounts of `block`.
    pub(crate) fn new(block: &'a [u8]) -> Result<UsersReader<'a>, StoreError> {
        match block.split_first() {
            None => Ok(UsersReader {
                bytes: &[],
                last: 0,
            }),
            Some((&USERS_FORMAT, rest)) => Ok(UsersReader {
                bytes: rest,
                last: 0,
            }),
            Some(_) => Err(StoreError::Damaged("user block of an unknown format")),
        }
    }

    /// The next account and its totals, or `None` at the end.
    pub(crate) fn next_user(&mut self) -> Result<Option<(i64, Totals)>, StoreError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let damaged = || StoreError::Damaged("user block");
        let delta = i64::try_from(self.varint()?).map_err(|_| damaged())?;
        let account = self
            .last
            .checked_add(delta)
            .filter(|&account| account > self.last)
            .ok_or_else(damaged)?;
        self.last = account;
        let totals = Totals {
            count: unzigzag(self.varint()?),
            quantity: unzigzag(self.varint()?),
            credits: unzigzag(self.varint()?),
        };
        Ok(Some((account, totals)))
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
    let (mut a, mut b) = (UsersReader::new(first)?, UsersReader::new(second)?);
    let mut merged = UsersWriter::new();
    merged.bytes.reserve(first.len() + second.len());
    let (mut next_a, mut next_b) = (a.next_user()?, b.next_user()?);
    loop {
        match (next_a, next_b) {
            (Some((account_a, totals_a)), Some((account_b, totals_b))) => {
                if account_a <= account_b {
                    merged.add(account_a, &totals_a)?;
                    next_a = a.next_user()?;
                } else {
                    merged.add(account_b, &totals_b)?;
                    next_b = b.next_user()?;
                }
            }
            (Some((account, totals)), None) => {
                merged.add(account, &totals)?;
                next_a = a.next_user()?;
            }
            (None, Some((account, totals))) => {
                merged.add(account, &totals)?;
                next_b = b.next_user()?;
            }
            (None, None) => return Ok(merged.finish()),
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

    fn block(accounts: &[(i64, Totals)]) -> Vec<u8> {
        let mut writer = UsersWriter::new();
        for (account, totals) in accounts {
            writer.add(*account, totals).unwrap();
        }
        writer.finish()
    }

    fn read(block: &[u8]) -> Result<Vec<(i64, Totals)>, StoreError> {
        let mut reader = UsersReader::new(block)?;
        let mut accounts = Vec::new();
        while let Some(account) = reader.next_user()? {
            accounts.push(account);
        }
        Ok(accounts)
    }

    #[test]
    fn a_block_reads_back_what_was_written_with_repeated_accounts_summed() {
        let written = block(&[
            (3, totals(1, 2, 300)),
            (3, totals(1, 0, 5)),
            (4, totals(7, 0, i64::MAX)),
            (1 << 40, totals(0, 0, -4)),
        ]);
        assert_eq!(
            read(&written).unwrap(),
            [
                (3, totals(2, 2, 305)),
                (4, totals(7, 0, i64::MAX)),
                (1 << 40, totals(0, 0, -4)),
            ]
        );
        assert_eq!(block(&[]), [USERS_FORMAT]);
        assert_eq!(read(&[]).unwrap(), []);
        let mut writer = UsersWriter::new();
        writer.add(5, &totals(1, 1, 1)).unwrap();
        assert!(matches!(
            writer.add(2, &totals(1, 1, 1)),
            Err(StoreError::Damaged(_))
        ));
        assert!(matches!(
            UsersWriter::new().add(0, &totals(1, 1, 1)),
            Err(StoreError::Damaged(_))
        ));
    }

    #[test]
    fn merging_sums_the_accounts_in_both_and_keeps_the_others_in_order() {
        let first = block(&[(1, totals(1, 1, 10)), (9, totals(2, 0, 20))]);
        let second = block(&[(5, totals(1, 0, 1)), (9, totals(1, 3, 2))]);
        let merged = merge_users(&first, &second).unwrap();
        assert_eq!(
            read(&merged).unwrap(),
            [
                (1, totals(1, 1, 10)),
                (5, totals(1, 0, 1)),
                (9, totals(3, 3, 22)),
            ]
        );
        assert_eq!(merge_users(&first, &block(&[])).unwrap(), first);
        assert_eq!(merge_users(&[], &second).unwrap(), second);
        let full = block(&[(1, totals(1, 0, i64::MAX))]);
        assert!(matches!(
            merge_users(&full, &full),
            Err(StoreError::Overflow(_))
        ));
    }

    #[test]
    fn a_damaged_block_is_an_error_never_a_panic() {
        let good = block(&[(7, totals(1, 2, 3)), (8, totals(4, 5, 6))]);
        for end in 0..good.len() {
            // Every truncation either reads a prefix of the accounts or fails.
            if let Ok(accounts) = read(&good[..end]) {
                assert!(accounts.len() < 2, "{end}");
            }
        }
        assert!(matches!(read(&[2, 1]), Err(StoreError::Damaged(_))));
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
        // A delta of 0 (the same account twice) or one past i64::MAX.
        assert!(matches!(
            read(&[USERS_FORMAT, 1, 0, 0, 0, 0, 0, 0, 0]),
            Err(StoreError::Damaged(_))
        ));
        let huge = [
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
            0x01,
            0,
            0,
            0,
        ];
        assert!(matches!(read(&huge), Err(StoreError::Damaged(_))));
    }
}
