use super::*;

/// 2024-05-01T12:34:56.789Z in ms since the Unix epoch.
const MAY_FIRST_MS: i64 = 1_714_566_896_789;

#[test]
fn reset_targets_parse_without_by_time() {
    assert_eq!(parse_reset_to("earliest", false, 0), Ok(ResetTo::Earliest));
    assert_eq!(parse_reset_to("latest", false, 0), Ok(ResetTo::Latest));
    assert_eq!(
        parse_reset_to("17", false, 0),
        Ok(ResetTo::Offset(Offset(17)))
    );
    assert!(parse_reset_to("-1h", false, 0).is_err());
    assert!(parse_reset_to("soon", false, 0).is_err());
}

#[test]
fn times_parse_as_ms_utc_dates_and_durations_ago() {
    let now = MAY_FIRST_MS;
    assert_eq!(parse_time_ms("1714566896789", now), Ok(MAY_FIRST_MS));
    assert_eq!(
        parse_time_ms("2024-05-01T12:34:56.789Z", now),
        Ok(MAY_FIRST_MS)
    );
    assert_eq!(
        parse_time_ms("2024-05-01T12:34:56Z", now),
        Ok(MAY_FIRST_MS - 789)
    );
    assert_eq!(
        parse_time_ms("2024-05-01T12:34Z", now),
        Ok(MAY_FIRST_MS - 56_789)
    );
    assert_eq!(parse_time_ms("1970-01-01", now), Ok(0));
    assert_eq!(parse_time_ms("2000-03-01", now), Ok(951_868_800_000));
    assert_eq!(parse_time_ms("-2h", now), Ok(now - 7_200_000));
    assert_eq!(parse_time_ms("-30s", now), Ok(now - 30_000));
    assert_eq!(parse_time_ms("-7d", now), Ok(now - 7 * 86_400_000));
    assert_eq!(parse_time_ms("-250ms", now), Ok(now - 250));
    assert_eq!(
        parse_reset_to("-1m", true, now),
        Ok(ResetTo::Timestamp(now - 60_000))
    );
}

#[test]
fn malformed_times_are_refused() {
    for bad in [
        "",
        "-",
        "-h",
        "-5w",
        "2024-02-30",
        "2023-02-29",
        "2024-13-01",
        "2024-05-01T24:00Z",
        "2024-05-01T12:60Z",
        "2024-05-01T12:34:56",
        "2024-05-01T12:34:56.7Z",
        "2024-5-1",
        "yesterday",
        "-99999999999999999999d",
    ] {
        assert!(parse_time_ms(bad, MAY_FIRST_MS).is_err(), "{bad:?}");
    }
    assert!(parse_time_ms("2024-02-29", MAY_FIRST_MS).is_ok());
}

#[test]
fn times_format_back_to_what_they_parse_from() {
    assert_eq!(
        format_time_ms(MAY_FIRST_MS as u64),
        "2024-05-01T12:34:56.789Z"
    );
    assert_eq!(format_time_ms(0), "1970-01-01T00:00:00.000Z");
    for days in [-1_000_000, -1, 0, 59, 60, 11_016, 19_844, 2_932_896] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
    }
}

#[test]
fn partition_lists_print_per_topic() {
    let topics = vec![
        TopicPartitions {
            topic: "a".into(),
            partitions: vec![
                vltava_messages::PartitionId(0),
                vltava_messages::PartitionId(2),
            ],
        },
        TopicPartitions {
            topic: "b".into(),
            partitions: vec![vltava_messages::PartitionId(1)],
        },
    ];
    assert_eq!(partitions_text(&topics), "a[0,2] b[1]");
    assert_eq!(partitions_text(&[]), "-");
}

#[test]
fn group_flags_need_a_group_and_exclude_plain_positions() {
    use clap::Parser;
    let parse =
        |args: &[&str]| Cli::try_parse_from(std::iter::once("vltava").chain(args.iter().copied()));
    assert!(parse(&["consume", "t", "--group", "g", "--from", "latest"]).is_ok());
    assert!(parse(&["consume", "--group", "g", "--pattern", "orders-*"]).is_ok());
    assert!(parse(&["consume", "t", "u", "--group", "g", "--instance-id", "i"]).is_ok());
    assert!(parse(&["consume", "t", "--from", "latest"]).is_err());
    assert!(parse(&["consume", "--pattern", "orders-*"]).is_err());
    assert!(parse(&["consume", "t", "--group", "g", "--partition", "1"]).is_err());
    assert!(parse(&["consume", "t", "--group", "g", "--offset", "5"]).is_err());
    assert!(parse(&["consume"]).is_err());
    assert!(
        parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "-1h",
            "--by-time"
        ])
        .is_ok()
    );
    assert!(parse(&["group", "describe"]).is_err());
}

/// Issue 11: `vltava admin actors --admin HOST:PORT` was refused because `--admin` was accepted
/// only between `admin` and its subcommand. Connection flags are global, as kafka tools and rpk
/// accept them anywhere on the line.
#[test]
fn connection_flags_are_accepted_anywhere_on_the_line() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("vltava").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    };
    for args in [
        &["--admin", "10.0.0.1:1", "admin", "actors"][..],
        &["admin", "--admin", "10.0.0.1:1", "actors"][..],
        &["admin", "actors", "--admin", "10.0.0.1:1"][..],
        &["admin", "actor", "n1/x", "--admin", "10.0.0.1:1"][..],
    ] {
        let cli = parse(args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"));
        assert_eq!(cli.admin, "10.0.0.1:1", "{args:?}");
    }
    let cli = parse(&["admin", "actors", "--admin-token", "tok"]).expect("token after subcommand");
    assert_eq!(cli.admin_token.as_deref(), Some("tok"));
    let cli = parse(&["topic", "list", "--bootstrap", "127.0.0.2:9420"]).expect("bootstrap last");
    assert_eq!(cli.bootstrap, "127.0.0.2:9420");
    let cli = parse(&["--bootstrap", "127.0.0.2:9420", "topic", "list"]).expect("bootstrap first");
    assert_eq!(cli.bootstrap, "127.0.0.2:9420");
}

/// `--replicas` takes a comma-separated list, in order: its first node is the preferred leader.
#[test]
fn reassign_reads_its_replicas_in_order() {
    let cli = Cli::try_parse_from([
        "vltava",
        "partition",
        "reassign",
        "orders",
        "3",
        "--replicas",
        "2,3,1",
    ])
    .unwrap();
    let Command::Partition {
        command:
            PartitionCommand::Reassign {
                topic,
                partition,
                replicas,
                no_wait,
                ..
            },
    } = cli.command
    else {
        panic!("a reassign command");
    };
    assert_eq!((topic.as_str(), partition), ("orders", 3));
    assert_eq!(replicas, vec![2, 3, 1]);
    assert!(!no_wait);
    assert!(
        Cli::try_parse_from(["vltava", "partition", "reassign", "orders", "3"]).is_err(),
        "--replicas is required"
    );
}
