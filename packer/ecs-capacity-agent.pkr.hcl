# An ECS container instance AMI with ecs-capacity-agent installed and enabled, built on the newest
# Amazon ECS-optimized Amazon Linux 2023 AMI. Build it with `make ami` (scripts/build-ami.sh), which
# lays out the files with `make install DESTDIR=target/ami/root` first; see README "Install on an ECS AMI".
#
# Written for Packer 1.6 (Debian 12's package, amazon builder built in) and later; with Packer >= 1.7
# install the Amazon plugin first: `packer plugins install github.com/hashicorp/amazon`.

variable "region" {
  type        = string
  description = "AWS region the AMI is built in."
  default     = "us-east-1"
}

variable "instance_type" {
  type        = string
  description = "Builder instance type; its architecture must match var.architecture and the binary."
  default     = "t3.small"
}

variable "architecture" {
  type        = string
  description = "x86_64 or arm64, as in the ECS-optimized AMI names."
  default     = "x86_64"
}

variable "subnet_id" {
  type        = string
  description = "Subnet of the builder instance (needs a route to the internet for SSH from Packer); empty: the default VPC."
  default     = ""
}

variable "ami_name_prefix" {
  type        = string
  description = "The AMI is named <prefix>-<agent_version>-<timestamp>."
  default     = "ecs-capacity-agent"
}

variable "agent_version" {
  type        = string
  description = "ecs-capacity-agent version baked in (Cargo.toml's version); tags the AMI."
}

variable "install_root" {
  type        = string
  description = "The tree laid out by `make install DESTDIR=...` (scripts/build-ami.sh passes it)."
  default     = "../target/ami/root"
}

variable "install_script" {
  type        = string
  description = "scripts/install.sh, run on the builder to install the uploaded tree."
  default     = "../scripts/install.sh"
}

locals {
  timestamp = formatdate("YYYYMMDDhhmmss", timestamp())
  staging   = "/tmp/ecs-capacity-agent"
}

source "amazon-ebs" "ecs_al2023" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_name_prefix}-${var.agent_version}-${local.timestamp}"

  # The newest ECS-optimized Amazon Linux 2023 AMI, e.g. al2023-ami-ecs-hvm-2023.0.20261113-kernel-6.1-x86_64.
  source_ami_filter {
    filters = {
      name                = "al2023-ami-ecs-hvm-*-kernel-6.1-${var.architecture}"
      architecture        = var.architecture
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  tags = {
    Name                         = "${var.ami_name_prefix}-${var.agent_version}"
    "ecs-capacity-agent:version" = var.agent_version
    "base-ami-name"              = "{{ .SourceAMIName }}"
    "base-ami-id"                = "{{ .SourceAMI }}"
  }
}

build {
  sources = ["source.amazon-ebs.ecs_al2023"]

  # The builder instance runs with IMDSv2 required and a hop limit of 1, as the README asks of every
  # instance, before anything is provisioned. Debian's Packer 1.6.6 (what this repository validates
  # with) has no `metadata_options`, so the build machine sets them with the AWS CLI and Packer's
  # own credentials (ec2:ModifyInstanceMetadataOptions), and the instance then proves it: a request
  # without a token must be refused (401).
  provisioner "shell-local" {
    inline = [
      "aws ec2 modify-instance-metadata-options --region ${var.region} --instance-id ${build.ID} --http-endpoint enabled --http-tokens required --http-put-response-hop-limit 1 --output text",
    ]
  }

  provisioner "shell" {
    inline = [
      "for i in $(seq 1 30); do code=$(curl -s -o /dev/null -w '%%{http_code}' http://169.254.169.254/latest/meta-data/instance-id); [ \"$code\" = 401 ] && exit 0; sleep 2; done; echo \"IMDS answered a request without a token ($code): the builder does not require IMDSv2\" >&2; exit 1",
    ]
  }

  provisioner "shell" {
    inline = ["mkdir -p ${local.staging}/root"]
  }

  # The tree `make install` laid out, and the script that installs it: the same step as `make install`.
  provisioner "file" {
    source      = "${var.install_root}/"
    destination = "${local.staging}/root"
  }

  provisioner "file" {
    source      = var.install_script
    destination = "${local.staging}/install.sh"
  }

  # Installs as root from the uploaded tree (binary 0755, config 0644, unit, state directory 0700),
  # then `systemctl enable` (ENABLE=1). The unit starts on the first boot of an instance, after
  # docker.service and ecs.service.
  provisioner "shell" {
    inline = [
      "sudo env BIN=${local.staging}/root/usr/bin/ecs-capacity-agent CONFIG=${local.staging}/root/etc/ecs-capacity-agent/config.toml UNIT=${local.staging}/root/usr/lib/systemd/system/ecs-capacity-agent.service ENABLE=1 bash ${local.staging}/install.sh",
      "sudo install -d -m 0700 -o root -g root /var/lib/ecs-capacity-agent",
      "/usr/bin/ecs-capacity-agent version",
      "sudo /usr/bin/ecs-capacity-agent check-config /etc/ecs-capacity-agent/config.toml > /dev/null",
      "systemctl is-enabled ecs-capacity-agent.service",
      "rm -rf ${local.staging}",
    ]
  }
}
