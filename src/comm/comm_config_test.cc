#include "comm/comm_config.h"

#include <gtest/gtest.h>

#include <map>

namespace frugal {
namespace {

EnvLookup env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(CommConfig, ReadsTorchrunVariables) {
  auto config = comm_config_from_env(CommConfig{}, env({{"RANK", "3"},
                                                        {"WORLD_SIZE", "8"},
                                                        {"LOCAL_RANK", "1"},
                                                        {"LOCAL_WORLD_SIZE", "2"},
                                                        {"MASTER_ADDR", "10.0.0.1"},
                                                        {"MASTER_PORT", "1234"},
                                                        {"GLOO_SOCKET_IFNAME", "eth1"}}));
  ASSERT_TRUE(config.is_ok()) << config.status().to_string();
  EXPECT_EQ(config->rank, 3);
  EXPECT_EQ(config->world_size, 8);
  EXPECT_EQ(config->local_rank, 1);
  EXPECT_EQ(config->local_size, 2);
  EXPECT_EQ(config->master_addr, "10.0.0.1");
  EXPECT_EQ(config->master_port, 1234);
  EXPECT_EQ(config->iface, "eth1");
  EXPECT_EQ(config->backend, "gloo");
}

TEST(CommConfig, FrugalIfnameWinsOverGloos) {
  auto config = comm_config_from_env(
      CommConfig{}, env({{"GLOO_SOCKET_IFNAME", "eth1"}, {"FRUGAL_SOCKET_IFNAME", "veth0"}}));
  ASSERT_TRUE(config.is_ok());
  EXPECT_EQ(config->iface, "veth0");
}

TEST(CommConfig, FlagsGivenBeatTheEnvironmentWhichBeatsTheDefaults) {
  CommConfig defaults;
  defaults.timeout_ms = 120'000;
  defaults.iface = "lo";
  auto vars = env({{"FRUGAL_TIMEOUT_MS", "5000"}, {"FRUGAL_SOCKET_IFNAME", "eth0"}});

  auto from_env = comm_config_from_env(defaults, vars);
  ASSERT_TRUE(from_env.is_ok()) << from_env.status().to_string();
  EXPECT_EQ(from_env->timeout_ms, 5000);
  EXPECT_EQ(from_env->iface, "eth0");

  auto from_flags = comm_config_from_env(defaults, vars, {.timeout_ms = 30'000, .iface = "eth1"});
  ASSERT_TRUE(from_flags.is_ok()) << from_flags.status().to_string();
  EXPECT_EQ(from_flags->timeout_ms, 30'000);
  EXPECT_EQ(from_flags->iface, "eth1");

  auto one_flag = comm_config_from_env(defaults, vars, {.iface = "eth1"});
  ASSERT_TRUE(one_flag.is_ok()) << one_flag.status().to_string();
  EXPECT_EQ(one_flag->timeout_ms, 5000) << "the timeout was not given: the environment's";

  auto no_env = comm_config_from_env(defaults, env({}));
  ASSERT_TRUE(no_env.is_ok()) << no_env.status().to_string();
  EXPECT_EQ(no_env->timeout_ms, 120'000);
  EXPECT_EQ(no_env->iface, "lo");
}

TEST(CommConfig, MpirunSelectsMpi) {
  auto config = comm_config_from_env(CommConfig{}, env({{"OMPI_COMM_WORLD_RANK", "0"}}));
  ASSERT_TRUE(config.is_ok());
  EXPECT_EQ(config->backend, "mpi");
  EXPECT_EQ(config->local_size, 0) << "not set";
}

TEST(CommConfig, ReadsMpirunsPlaceOnTheHostUnlessTorchrunStyleNamesAreSet) {
  auto mpi = comm_config_from_env(CommConfig{}, env({{"OMPI_COMM_WORLD_RANK", "5"},
                                                     {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}}));
  ASSERT_TRUE(mpi.is_ok()) << mpi.status().to_string();
  EXPECT_EQ(mpi->local_rank, 1);
  EXPECT_EQ(mpi->local_size, 4);
  auto both = comm_config_from_env(CommConfig{}, env({{"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                      {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                                      {"LOCAL_RANK", "0"},
                                                      {"LOCAL_WORLD_SIZE", "2"}}));
  ASSERT_TRUE(both.is_ok()) << both.status().to_string();
  EXPECT_EQ(both->local_rank, 0);
  EXPECT_EQ(both->local_size, 2);
}

TEST(CommConfig, RankOutOfRangeNamesTheValidRange) {
  auto config = comm_config_from_env(CommConfig{}, env({{"RANK", "4"}, {"WORLD_SIZE", "4"}}));
  ASSERT_FALSE(config.is_ok());
  EXPECT_EQ(config.status().message(), "RANK=4 is out of range for WORLD_SIZE=4; valid: 0..3");
}

TEST(CommConfig, RejectsBadValues) {
  struct Bad {
    std::map<std::string, std::string> vars;
    std::string message_part;
  };
  std::vector<Bad> cases = {
      {{{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK='x' is not an integer"},
      {{{"RANK", "0"}}, "RANK and WORLD_SIZE must be set together"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 is invalid"},
      {{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "RANK=-1 is out of range"},
      {{{"MASTER_PORT", "70000"}}, "MASTER_PORT=70000 is invalid; valid: 1..65535"},
      {{{"FRUGAL_TIMEOUT_MS", "0"}}, "must be > 0"},
      {{{"LOCAL_WORLD_SIZE", "0"}}, "LOCAL_WORLD_SIZE=0 is invalid; it must be >= 1"},
      {{{"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}},
       "LOCAL_RANK=2 is out of range for LOCAL_WORLD_SIZE=2; valid: 0..1"},
      {{{"FRUGAL_BACKEND", "nccl"}}, "unknown backend 'nccl'; valid: local, gloo, mpi"},
      {{{"WORLD_SIZE", "99999999999"}, {"RANK", "0"}}, "WORLD_SIZE"},
  };
  for (const Bad& bad : cases) {
    auto config = comm_config_from_env(CommConfig{}, env(bad.vars));
    ASSERT_FALSE(config.is_ok()) << bad.message_part;
    EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(config.status().message().find(bad.message_part), std::string::npos)
        << config.status().message();
  }
}

}  // namespace
}  // namespace frugal
