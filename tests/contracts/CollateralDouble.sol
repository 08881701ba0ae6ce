// SPDX-License-Identifier: MIT
// A test double of a validator's collateral contract, written for miner-agent's tests from the
// interface in shared/reference/collateral.md §2 (constructor, functions, events, errors, rules).
// It is not the upstream contract; only its ABI and observable rules are meant to match.
// Rebuild the committed artifact with scripts/build-test-contract.sh.
pragma solidity ^0.8.27;

contract CollateralDouble {
    struct Reclaim {
        address miner;
        uint256 amount;
        uint256 denyTimeout;
    }

    uint16 public immutable NETUID;
    address public immutable TRUSTEE;
    uint256 public immutable MIN_COLLATERAL_INCREASE;
    uint64 public immutable DECISION_TIMEOUT;

    mapping(address => uint256) public collaterals;
    mapping(uint256 => Reclaim) public reclaims;

    mapping(address => uint256) private pendingOf;
    uint256 private lastReclaimId;

    event Deposit(address indexed account, uint256 amount);
    event ReclaimProcessStarted(
        uint256 indexed reclaimRequestId,
        address indexed account,
        uint256 amount,
        uint64 expirationTime,
        string url,
        bytes16 urlContentMd5Checksum
    );
    event Reclaimed(uint256 indexed reclaimRequestId, address indexed account, uint256 amount);
    event Denied(uint256 indexed reclaimRequestId, string url, bytes16 urlContentMd5Checksum);
    event Slashed(address indexed account, uint256 amount, string url, bytes16 urlContentMd5Checksum);

    error AmountZero();
    error BeforeDenyTimeout();
    error InsufficientAmount();
    error InvalidDepositMethod();
    error NotTrustee();
    error PastDenyTimeout();
    error ReclaimAmountTooLarge();
    error ReclaimAmountTooSmall();
    error ReclaimNotFound();
    error TransferFailed();

    constructor(uint16 netuid, address trustee, uint256 minCollateralIncrease, uint64 decisionTimeout) {
        NETUID = netuid;
        TRUSTEE = trustee;
        MIN_COLLATERAL_INCREASE = minCollateralIncrease;
        DECISION_TIMEOUT = decisionTimeout;
    }

    modifier onlyTrustee() {
        if (msg.sender != TRUSTEE) revert NotTrustee();
        _;
    }

    receive() external payable {
        revert InvalidDepositMethod();
    }

    fallback() external payable {
        revert InvalidDepositMethod();
    }

    function deposit() external payable {
        if (msg.value < MIN_COLLATERAL_INCREASE) revert InsufficientAmount();
        collaterals[msg.sender] += msg.value;
        emit Deposit(msg.sender, msg.value);
    }

    function reclaimCollateral(uint256 amount, string calldata url, bytes16 urlContentMd5Checksum) external {
        if (amount == 0) revert AmountZero();
        uint256 held = collaterals[msg.sender];
        uint256 pending = pendingOf[msg.sender];
        if (pending + amount > held) revert ReclaimAmountTooLarge();
        // Below the minimum only when it takes the whole free remainder.
        if (amount < MIN_COLLATERAL_INCREASE && amount != held - pending) revert ReclaimAmountTooSmall();
        lastReclaimId += 1;
        uint64 expiration = uint64(block.timestamp) + DECISION_TIMEOUT;
        reclaims[lastReclaimId] = Reclaim(msg.sender, amount, expiration);
        pendingOf[msg.sender] = pending + amount;
        emit ReclaimProcessStarted(lastReclaimId, msg.sender, amount, expiration, url, urlContentMd5Checksum);
    }

    function finalizeReclaim(uint256 reclaimRequestId) external {
        Reclaim memory r = reclaims[reclaimRequestId];
        if (r.amount == 0) revert ReclaimNotFound();
        if (block.timestamp <= r.denyTimeout) revert BeforeDenyTimeout();
        delete reclaims[reclaimRequestId];
        pendingOf[r.miner] -= r.amount;
        // A slash may have left less than was asked for: then nothing is paid and no event is emitted.
        if (collaterals[r.miner] < r.amount) return;
        collaterals[r.miner] -= r.amount;
        (bool sent, ) = payable(r.miner).call{value: r.amount}("");
        if (!sent) revert TransferFailed();
        emit Reclaimed(reclaimRequestId, r.miner, r.amount);
    }

    function denyReclaimRequest(uint256 reclaimRequestId, string calldata url, bytes16 urlContentMd5Checksum)
        external
        onlyTrustee
    {
        Reclaim memory r = reclaims[reclaimRequestId];
        if (r.amount == 0) revert ReclaimNotFound();
        if (block.timestamp > r.denyTimeout) revert PastDenyTimeout();
        delete reclaims[reclaimRequestId];
        pendingOf[r.miner] -= r.amount;
        emit Denied(reclaimRequestId, url, urlContentMd5Checksum);
    }

    function slashCollateral(address miner, uint256 amount, string calldata url, bytes16 urlContentMd5Checksum)
        external
        onlyTrustee
    {
        if (amount == 0) revert AmountZero();
        uint256 held = collaterals[miner];
        uint256 taken = amount > held ? held : amount;
        collaterals[miner] = held - taken;
        (bool sent, ) = payable(TRUSTEE).call{value: taken}("");
        if (!sent) revert TransferFailed();
        emit Slashed(miner, taken, url, urlContentMd5Checksum);
    }
}
