// SPDX-License-Identifier: Apache-2.0
/**
 * The {@code iovirt} command: every picocli class lives here, one per command or command group, and follows the
 * contract of docs/cli.md — exit codes 0/1/2, one-line errors {@code iovirt <command>: <what failed>: <why> — <what
 * to do>} (with {@code --json}, a JSON object), {@code --json} on read commands, {@code --log-level} and
 * {@code --log-format} on long-running ones. The contract is enforced for every command by {@code CliContractTest}.
 */
package io.iovirt.cli;
